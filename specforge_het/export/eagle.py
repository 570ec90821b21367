"""Bridge to the original EAGLE-1/2 checkpoints (SafeAILab/EAGLE, PyPI eagle-llm; the
yuhuili/EAGLE-* layout): import them into our draft folders, export ours to that layout.

Layout (read from eagle-llm 1.2.1 `model/cnets.py`, `configs.py`, `ea_model.py`):
  config.json   a Llama config that `EConfig` reads: hidden_size, intermediate_size,
                num_hidden_layers, num_attention_heads, num_key_value_heads, hidden_act,
                max_position_embeddings, rms_norm_eps, vocab_size, rope_scaling (null), pretraining_tp,
                plus `bias` (fc bias; absent = true). head_dim is hidden_size / num_attention_heads.
                eagle-llm 1.2.1 ignores rope_theta (rotary base 10000), so a draft of another theta is
                refused unless --force says it is served with the current GitHub code, which reads it.
  weights       pytorch_model.bin (read here only with torch.load(weights_only=True)) or model.safetensors:
                fc.weight, fc.bias, layers.{i}.self_attn.*, layers.{i}.mlp.*, layers.{i}.post_attention_layernorm,
                layers.{i}.input_layernorm for i >= 1 (layer 0 has none), optional embed_tokens.weight.
The names map one-to-one onto our EagleV2 DraftModel (`EAGLE_KEY_MAP`); a checkpoint with other keys
is rejected naming both the unexpected and the missing ones. We write model.safetensors (which current
EAGLE loads) and always include embed_tokens.weight (eagle-llm 1.2.1 loads strictly).
"""

from __future__ import annotations

from pathlib import Path

import torch

from specforge_het.export.common import (
    ExportOptions,
    embedding_table,
    float_dtype_of,
    llama_layer_config,
    read_folder,
    refuse,
    warn,
    write_folder,
)
from specforge_het.export.contract import ExportError, check_contract, describe_tensors
from specforge_het.export.sglang_eagle import (
    EAGLE_KEY_MAP,
    EAGLE_OPTIONAL,
    eagle12_from_state,
    eagle12_refusals,
    eagle12_state,
    eagle_key_map,
)
from specforge_het.models.draft import DraftModel

FORMAT = "eagle"
__all__ = ["EAGLE_KEY_MAP", "to_eagle_state_dict", "from_eagle_state_dict", "read_eagle_checkpoint",
           "import_eagle_checkpoint", "export_eagle", "check_eagle_keys", "normalise_eagle_config"]


EAGLE_LLM_THETA = 10000.0  # eagle-llm 1.2.1 (PyPI) builds every rotary embedding with this base


def to_eagle_state_dict(draft: DraftModel, dtype: torch.dtype | None = None,
                        options: ExportOptions | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, tensors) in the original EAGLE-1/2 layout, embed_tokens included."""
    cfg, options = draft.cfg, options or ExportOptions()
    problems = eagle12_refusals(draft, FORMAT)
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        problems.append(f"head_dim {cfg.head_dim} x {cfg.num_heads} heads != width {cfg.hidden_size}; EAGLE computes "
                        "head_dim = hidden_size / num_attention_heads.")
    if cfg.rope_scaling:
        problems.append(f"its rope uses '{cfg.rope_scaling['rope_type']}' scaling, which EAGLE-1/2 code does not build "
                        "(rope_scaling must be null). Export as sglang-eagle, or train with plain rope "
                        "(--modeling.draft_rope_theta THETA).")
    theta = (f"its rope theta is {cfg.rope_theta}, but eagle-llm 1.2.1 (PyPI) ignores rope_theta and always uses "
             f"{EAGLE_LLM_THETA:g}, so it would run this draft at other rotary angles.")
    if cfg.rope_theta != EAGLE_LLM_THETA and options.force:
        warn(theta + " Written anyway (--force): serve it with the current SafeAILab/EAGLE code, which reads rope_theta.")
    elif cfg.rope_theta != EAGLE_LLM_THETA:
        problems.append(theta + f" Train the draft with --modeling.draft_rope_theta {EAGLE_LLM_THETA:g}, or pass --force "
                        "if you serve it with the current SafeAILab/EAGLE code from GitHub (it reads rope_theta).")
    refuse(FORMAT, problems)
    state = eagle12_state(draft, dtype, FORMAT)
    table = embedding_table(draft)
    state["embed_tokens.weight"] = table.to(state["fc.weight"].dtype)
    config = {"architectures": ["LlamaForCausalLM"], **llama_layer_config(draft), "bias": True, "pretraining_tp": 1,
              "pad_token_id": None, "torch_dtype": str(state["fc.weight"].dtype).removeprefix("torch.")}
    return config, state


def export_eagle(draft: DraftModel, out_dir: str | Path, dtype: torch.dtype | None = None,
                 options: ExportOptions | None = None) -> Path:
    config, state = to_eagle_state_dict(draft, dtype, options)
    return write_folder(out_dir, FORMAT, config, state)


# ------------------------------------------------------------------ import

def normalise_eagle_config(config: dict, state: dict[str, torch.Tensor]) -> dict:
    """Fill the defaults EAGLE's EConfig applies, so the contract check sees every key."""
    c = dict(config)
    if c.get("qkv_bias"):
        raise ExportError("config 'qkv_bias' is true (a Qwen2-style EAGLE head); only Llama layers without biases import.")
    heads = c.get("num_attention_heads")
    c.setdefault("model_type", "llama")
    c.setdefault("architectures", ["LlamaForCausalLM"])
    c.setdefault("num_key_value_heads", heads)
    if heads and c.get("hidden_size"):
        c.setdefault("head_dim", c["hidden_size"] // heads)
    for key, default in (("hidden_act", "silu"), ("rms_norm_eps", 1e-6), ("max_position_embeddings", 2048),
                         ("rope_theta", 10000.0), ("tie_word_embeddings", False), ("rope_scaling", None),
                         ("bias", True)):
        c.setdefault(key, default)
    c["pretraining_tp"] = 1  # tensor-parallel slicing in EAGLE computes the same product
    c["torch_dtype"] = float_dtype_of(state)
    return c


def check_eagle_keys(config: dict, state: dict[str, torch.Tensor]) -> None:
    """Reject a checkpoint whose keys are not exactly the declared map (both lists in the message)."""
    n = config.get("num_hidden_layers")
    if not isinstance(n, int) or n < 1:
        raise ExportError(f"config 'num_hidden_layers' = {n!r}; an EAGLE checkpoint needs a positive layer count")
    expected = set(eagle_key_map(n))
    if not config.get("bias", True):
        expected.discard("fc.bias")
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - set(EAGLE_OPTIONAL))
    if missing or unexpected:
        raise ExportError(f"not an EAGLE-1/2 checkpoint of {n} layer(s): unexpected keys {unexpected}; missing keys "
                          f"{missing}. Expected exactly {sorted(expected)} (+ optional {list(EAGLE_OPTIONAL)}).")


def read_eagle_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json + model.safetensors or pytorch_model.bin (weights_only), keys and contract checked."""
    config, state = read_folder(path)
    check_eagle_keys(config, state)
    config = normalise_eagle_config(config, state)
    problems = check_contract(FORMAT, config, describe_tensors(state))
    if problems:
        raise ExportError(f"'{path}' breaks the EAGLE-1/2 contract:\n  - " + "\n  - ".join(problems))
    return config, state


def from_eagle_state_dict(config: dict, state: dict[str, torch.Tensor], base) -> DraftModel:
    """Our EagleV2 DraftModel (attached to `base`) from an EAGLE-1/2 config + state dict."""
    check_eagle_keys(config, state)
    config = normalise_eagle_config(config, state)
    refuse(FORMAT, check_contract(FORMAT, config, describe_tensors(state)))
    return eagle12_from_state(FORMAT, config, state, base)


def import_eagle_checkpoint(path: str | Path, base) -> DraftModel:
    """Read an original EAGLE-1/2 checkpoint folder into an EagleV2 DraftModel on `base`."""
    config, state = read_folder(path)
    return from_eagle_state_dict(config, state, base)


def from_state_dict(config: dict, state: dict[str, torch.Tensor], base) -> DraftModel:
    return from_eagle_state_dict(config, state, base)


def to_state_dict(draft: DraftModel, dtype: torch.dtype | None = None,
                  options: ExportOptions | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    return to_eagle_state_dict(draft, dtype, options)


def normalise_config(config: dict, state: dict[str, torch.Tensor], base=None) -> dict:
    return normalise_eagle_config(config, state)
