"""The contract of every export format: which tensors (name, shape, dtype) and which config keys an
engine loads. Pure functions over `config: dict` and `tensors: {name: (shape, dtype)}`.

Engines silently skip tensor names they do not know, so a misnamed weight would stay random
without any error. `check_contract` therefore fails on every missing, misshaped, mistyped *and
unknown* tensor, and on every missing or wrong config key. The exporter runs it on what it wrote;
`python -m specforge_het.export check OUT --format F` runs it on any folder.

Sources of the rules: docs formats.md (sglang 0.5.23 `llama_eagle3.py` / `llama_eagle.py`, vLLM
`llama_eagle3.py` + speculators `Eagle3SpeculatorConfig`, SafeAILab/EAGLE `cnets.py` + `configs.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

FLOAT_DTYPES = ("float32", "bfloat16", "float16")
Shape = tuple[int, ...]
TensorSpec = dict[str, tuple[Shape, str]]  # name -> (shape, dtype name such as "float32", "int64", "bool")


class ExportError(ValueError):
    """A draft or folder a format cannot express; the message names the problem and the fix."""


class ExportWarning(UserWarning):
    """A folder that loads, but where the engine version or the base weights served decide how well it works."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe_tensors(state: dict[str, torch.Tensor]) -> TensorSpec:
    return {k: (tuple(v.shape), dtype_name(v.dtype)) for k, v in state.items()}


# ------------------------------------------------------------------ config key rules

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pos_int(v) -> bool:
    return _is_int(v) and v > 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _equals(x) -> Callable[[Any], bool]:
    return lambda v: v == x and type(v) is type(x)


def _check_keys(cfg: dict, rules: dict[str, tuple[Callable[[Any], bool], str]], where: str = "") -> list[str]:
    errors = []
    for key, (ok, want) in rules.items():
        if key not in cfg:
            errors.append(f"config key '{where}{key}' is missing (must be {want})")
        elif not ok(cfg[key]):
            errors.append(f"config key '{where}{key}' = {cfg[key]!r}, must be {want}")
    return errors


def llama_layer_rules(num_layers: Callable[[Any], bool], layers_want: str) -> dict:
    """Keys of a Llama config an engine builds the draft layers from."""
    return {
        "model_type": (_equals("llama"), "'llama'"),
        "hidden_size": (_pos_int, "a positive int (draft width)"),
        "vocab_size": (_pos_int, "a positive int (the base vocabulary size)"),
        "num_hidden_layers": (num_layers, layers_want),
        "num_attention_heads": (_pos_int, "a positive int"),
        "num_key_value_heads": (_pos_int, "a positive int"),
        "head_dim": (_pos_int, "a positive int"),
        "intermediate_size": (_pos_int, "a positive int"),
        "rms_norm_eps": (_number, "a positive number"),
        "hidden_act": (_equals("silu"), "'silu'"),
        "max_position_embeddings": (_pos_int, "a positive int"),
        "rope_theta": (_number, "a positive number"),
        "tie_word_embeddings": (_equals(False), "false (true makes the engine use the embedding as LM head)"),
    }


def rope_scaling_problems(cfg: dict, where: str = "") -> list[str]:
    """`rope_scaling`, where present: null (plain rope) or a dict naming its 'rope_type' (engines build that rope)."""
    rope = cfg.get("rope_scaling")
    if rope is None or (isinstance(rope, dict) and isinstance(rope.get("rope_type") or rope.get("type"), str)):
        return []
    return [f"config key '{where}rope_scaling' = {rope!r}, must be null or a dict with a 'rope_type'"]


def _dtype_rule() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in FLOAT_DTYPES, f"one of {FLOAT_DTYPES} (the dtype of the float tensors)")


# ------------------------------------------------------------------ tensor rules

def layer_tensors(prefix: str, hidden: int, in_attn: int, cfg: dict, input_norm: bool) -> dict[str, Shape]:
    """Llama decoder layer tensors. in_attn = input width of q/k/v (2·hidden for EAGLE-3's layer 0)."""
    heads, kv, hd, inter = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["intermediate_size"]
    out = {
        f"{prefix}self_attn.q_proj.weight": (heads * hd, in_attn),
        f"{prefix}self_attn.k_proj.weight": (kv * hd, in_attn),
        f"{prefix}self_attn.v_proj.weight": (kv * hd, in_attn),
        f"{prefix}self_attn.o_proj.weight": (hidden, heads * hd),
        f"{prefix}mlp.gate_proj.weight": (inter, hidden),
        f"{prefix}mlp.up_proj.weight": (inter, hidden),
        f"{prefix}mlp.down_proj.weight": (hidden, inter),
        f"{prefix}post_attention_layernorm.weight": (hidden,),
    }
    if input_norm:
        out[f"{prefix}input_layernorm.weight"] = (hidden,)
    return out


def _compare(tensors: TensorSpec, required: dict[str, Shape], optional: dict[str, Shape],
             int_dtypes: dict[str, str]) -> list[str]:
    """Missing / misshaped / mistyped / unknown tensors. Float tensors must share one float dtype."""
    errors = []
    for name, shape in required.items():
        if name not in tensors:
            errors.append(f"tensor '{name}' {list(shape)} is missing")
    known = {**optional, **required}
    for name, (shape, dtype) in sorted(tensors.items()):
        if name not in known:
            errors.append(f"tensor '{name}' is unknown to the engine (it would be skipped silently)")
            continue
        if tuple(shape) != tuple(known[name]):
            errors.append(f"tensor '{name}' has shape {list(shape)}, the engine expects {list(known[name])}")
        want = int_dtypes.get(name)
        if want and dtype != want:
            errors.append(f"tensor '{name}' has dtype {dtype}, must be {want}")
        elif not want and dtype not in FLOAT_DTYPES:
            errors.append(f"tensor '{name}' has dtype {dtype}, must be a float dtype {FLOAT_DTYPES}")
    floats = {dtype for name, (_, dtype) in tensors.items() if name in known and name not in int_dtypes}
    if len(floats) > 1:
        errors.append(f"float tensors mix dtypes {sorted(floats)}; write one dtype")
    return errors


# ------------------------------------------------------------------ EAGLE-3 (SGLang and speculators)

def eagle3_tensors(layer_cfg: dict, draft_vocab: int, target_hidden: int, n_features: int, bias: bool,
                   layer_prefix: str) -> tuple[dict[str, Shape], dict[str, Shape]]:
    h, v = layer_cfg["hidden_size"], layer_cfg["vocab_size"]
    required = {"fc.weight": (h, n_features * target_hidden), f"{layer_prefix}input_layernorm.weight": (h,),
                f"{layer_prefix}hidden_norm.weight": (h,), "norm.weight": (h,), "lm_head.weight": (draft_vocab, h),
                "d2t": (draft_vocab,), "t2d": (v,)}
    required.update(layer_tensors(layer_prefix, h, 2 * h, layer_cfg, input_norm=False))
    if bias:
        required["fc.bias"] = (h,)
    optional = {}
    if target_hidden != h:
        required["embed_tokens.weight"] = (v, h)
    else:
        optional["embed_tokens.weight"] = (v, h)
    return required, optional


EAGLE3_INT = {"d2t": "int64", "t2d": "bool"}


def _aux_ids_ok(v, lowest: int = 0) -> bool:
    """3 sorted distinct layer ids, none below `lowest` (engines capture base layer inputs 1 .. L-1 only)."""
    return (isinstance(v, list) and len(v) == 3 and all(_is_int(i) for i in v) and v == sorted(set(v))
            and v[0] >= lowest)


def check_sglang_eagle3(cfg: dict, tensors: TensorSpec) -> list[str]:
    rules = {"architectures": (_equals(["LlamaForCausalLMEagle3"]), "['LlamaForCausalLMEagle3']"),
             **llama_layer_rules(_equals(1), "1 (multi-layer EAGLE-3 drafts are not portable)"),
             "draft_vocab_size": (_pos_int, "a positive int (rows of lm_head; null would load the base head)"),
             "target_hidden_size": (_pos_int, "a positive int (base width)"),
             "bias": (lambda x: isinstance(x, bool), "a bool (fc bias)"),
             "torch_dtype": _dtype_rule()}
    errors = _check_keys(cfg, rules) + rope_scaling_problems(cfg)
    ids = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if ids is not None and not _aux_ids_ok(ids):  # SGLang captures the input of layer id + 1
        errors.append(f"eagle_config.eagle_aux_hidden_state_layer_ids = {ids!r}, must be 3 sorted distinct ints >= 0")
    if errors:
        return errors
    req, opt = eagle3_tensors(cfg, cfg["draft_vocab_size"], cfg["target_hidden_size"], 3, cfg["bias"], "midlayer.")
    if 3 * cfg["target_hidden_size"] == cfg["hidden_size"]:
        errors.append("3 x target_hidden_size == hidden_size: SGLang would skip fc (it applies fc only when widths differ)")
    return errors + _compare(tensors, req, opt, EAGLE3_INT) + _dtype_matches(cfg["torch_dtype"], tensors, EAGLE3_INT)


def check_speculators(cfg: dict, tensors: TensorSpec) -> list[str]:
    rules = {
        "speculators_model_type": (_equals("eagle3"), "'eagle3'"),
        "architectures": (_equals(["Eagle3Speculator"]), "['Eagle3Speculator']"),
        "transformer_layer_config": (lambda x: isinstance(x, dict), "a dict (HF config of the draft layer)"),
        "draft_vocab_size": (_pos_int, "a positive int"),
        "target_hidden_size": (_pos_int, "a positive int (base width)"),
        "norm_before_residual": (_equals(False), "false, written explicitly (vLLM assumes true when missing)"),
        "eagle_aux_hidden_state_layer_ids": (lambda v: _aux_ids_ok(v, 1), "3 sorted distinct base layer ids >= 1"),
        "speculators_config": (lambda x: isinstance(x, dict), "a dict"),
        "torch_dtype": _dtype_rule(),
    }
    errors = _check_keys(cfg, rules)
    if errors:
        return errors
    layer = cfg["transformer_layer_config"]
    errors += _check_keys(layer, llama_layer_rules(_equals(1), "1"), "transformer_layer_config.")
    errors += rope_scaling_problems(layer, "transformer_layer_config.")
    errors += _check_speculators_config(cfg["speculators_config"])
    if errors:
        return errors
    req, opt = eagle3_tensors(layer, cfg["draft_vocab_size"], cfg["target_hidden_size"], 3, False, "layers.0.")
    return errors + _compare(tensors, req, opt, EAGLE3_INT) + _dtype_matches(cfg["torch_dtype"], tensors, EAGLE3_INT)


def _check_speculators_config(sc: dict) -> list[str]:
    w = "speculators_config."
    errors = _check_keys(sc, {
        "algorithm": (_equals("eagle3"), "'eagle3'"),
        "proposal_methods": (lambda x: isinstance(x, list) and len(x) >= 1, "a non-empty list"),
        "default_proposal_method": (_equals("greedy"), "'greedy'"),
        "verifier": (lambda x: isinstance(x, dict), "a dict {name_or_path, architectures}"),
    }, w)
    if errors:
        return errors
    errors += _check_keys(sc["proposal_methods"][0], {
        "proposal_type": (_equals("greedy"), "'greedy'"),
        "speculative_tokens": (_pos_int, "a positive int"),
        "verifier_accept_k": (_equals(1), "1"),
        "accept_tolerance": (_equals(0.0), "0.0"),
    }, w + "proposal_methods[0].")
    errors += _check_keys(sc["verifier"], {
        "name_or_path": (lambda x: isinstance(x, str) and bool(x), "the base model's name or path"),
        "architectures": (lambda x: isinstance(x, list) and bool(x), "the base model's architectures list"),
    }, w + "verifier.")
    return errors


# ------------------------------------------------------------------ EAGLE-1/2 (SGLang and original EAGLE)

def eagle12_tensors(cfg: dict, bias: bool) -> tuple[dict[str, Shape], dict[str, Shape]]:
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    required: dict[str, Shape] = {"fc.weight": (h, 2 * h)}
    if bias:
        required["fc.bias"] = (h,)
    for i in range(cfg["num_hidden_layers"]):
        required.update(layer_tensors(f"layers.{i}.", h, h, cfg, input_norm=i > 0))
    return required, {"embed_tokens.weight": (v, h)}


def check_sglang_eagle(cfg: dict, tensors: TensorSpec) -> list[str]:
    rules = {"architectures": (_equals(["LlamaForCausalLMEagle"]), "['LlamaForCausalLMEagle']"),
             **llama_layer_rules(_pos_int, "a positive int"), "torch_dtype": _dtype_rule()}
    errors = _check_keys(cfg, rules) + rope_scaling_problems(cfg)
    if errors:
        return errors
    req, opt = eagle12_tensors(cfg, bias=True)  # SGLang builds fc with a bias
    return _compare(tensors, req, opt, {}) + _dtype_matches(cfg["torch_dtype"], tensors, {})


def check_eagle(cfg: dict, tensors: TensorSpec) -> list[str]:
    """The original EAGLE-1/2 layout (EConfig + cnets.Model): head_dim = hidden / heads, rope_scaling null."""
    rules = {"architectures": (_equals(["LlamaForCausalLM"]), "['LlamaForCausalLM']"),
             **llama_layer_rules(_pos_int, "a positive int"),
             "rope_scaling": (lambda x: x is None, "null (EAGLE's rotary scaling is not supported here)"),
             "pretraining_tp": (_equals(1), "1"), "torch_dtype": _dtype_rule()}
    errors = _check_keys(cfg, rules)
    if "bias" in cfg and not isinstance(cfg["bias"], bool):
        errors.append(f"config key 'bias' = {cfg['bias']!r}, must be a bool (absent means true)")
    if errors:
        return errors
    if cfg["head_dim"] * cfg["num_attention_heads"] != cfg["hidden_size"]:
        errors.append(f"head_dim {cfg['head_dim']} x heads {cfg['num_attention_heads']} != hidden_size "
                      f"{cfg['hidden_size']}: EAGLE computes head_dim = hidden_size / num_attention_heads")
    req, opt = eagle12_tensors(cfg, bias=cfg.get("bias", True))
    return errors + _compare(tensors, req, opt, {}) + _dtype_matches(cfg["torch_dtype"], tensors, {})


def _dtype_matches(want: str, tensors: TensorSpec, ints: dict[str, str]) -> list[str]:
    bad = sorted(n for n, (_, d) in tensors.items() if n not in ints and d in FLOAT_DTYPES and d != want)
    return [f"tensors {bad[:3]} are not torch_dtype {want}"] if bad else []


CHECKS: dict[str, Callable[[dict, TensorSpec], list[str]]] = {
    "sglang-eagle3": check_sglang_eagle3,
    "speculators": check_speculators,
    "sglang-eagle": check_sglang_eagle,
    "eagle": check_eagle,
}


def check_contract(fmt: str, config: dict, tensors: TensorSpec) -> list[str]:
    """Every violation of format `fmt`'s contract (empty list = the engine loads every tensor as meant)."""
    if fmt not in CHECKS:
        raise ExportError(f"unknown export format '{fmt}'; formats: {sorted(CHECKS)}")
    return CHECKS[fmt](config, tensors)


def check_vocab_maps(d2t: torch.Tensor, t2d: torch.Tensor, vocab_size: int) -> list[str]:
    """Values of EAGLE-3's d2t (offsets: base id = i + d2t[i]) and t2d (bool mask of proposable base ids)."""
    ids = torch.arange(d2t.shape[0]) + d2t.long()
    errors = []
    if d2t.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        errors.append(f"d2t maps outside the base vocabulary [0, {vocab_size}) (d2t holds offsets: base = i + d2t[i])")
        return errors
    if ids.unique().numel() != ids.numel():
        errors.append("d2t maps two draft rows to the same base id")
    if t2d.shape[0] != vocab_size or int(t2d.sum()) != d2t.shape[0] or not bool(t2d[ids].all()):
        errors.append("t2d is not the mask of the base ids d2t maps to")
    return errors
