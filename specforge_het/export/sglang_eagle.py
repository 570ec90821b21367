"""SGLang EAGLE-1/2 (`--speculative-algorithm EAGLE`, class LlamaForCausalLMEagle), and the
EAGLE-1/2 tensor layout it shares with the original EAGLE checkpoints (see eagle.py).

    fc.weight [H, 2H] + fc.bias [H]   (input: cat(token embedding, base feature))
    layers.{i}.* Llama names; layer 0 without input_layernorm; no final norm
Embedding and LM head come from the base, so the draft must be an EagleV2 draft of the base's
width over the base vocabulary, built with --modeling.draft_first_input_norm false (the
`eagle_v2` preset does this).
"""

from __future__ import annotations

import torch

from specforge_het.algorithms.eagle_v2 import EagleV2
from specforge_het.algorithms.eagle_v2.model import EagleV2Draft
from specforge_het.export.common import (
    ExportOptions,
    apply_key_map,
    build_imported,
    check_base_fits,
    draft_state,
    embedding_table,
    family_refusals,
    llama_layer_config,
    nothing_left,
    raw_base_embedding,
    refuse,
    same_table,
    sizes_from_llama_config,
)
from specforge_het.export.contract import ExportError
from specforge_het.models.base import LAST
from specforge_het.models.draft import DraftConfig, DraftModel

FORMAT = "sglang-eagle"
ARCH = "LlamaForCausalLMEagle"
_LAYER = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
          "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "post_attention_layernorm.weight")
# DraftModel tensors an EagleV2 draft owns but never reads (its logits come from the base head, unnormed).
UNUSED = ("norm.weight",)


def eagle_key_map(num_layers: int) -> dict[str, str]:
    """EAGLE-1/2 checkpoint name -> DraftModel name. The names coincide; the map is the declared contract."""
    key_map = {"fc.weight": "fc.weight", "fc.bias": "fc.bias"}
    for i in range(num_layers):
        for name in _LAYER + (("input_layernorm.weight",) if i > 0 else ()):
            key_map[f"layers.{i}.{name}"] = f"layers.{i}.{name}"
    return key_map


# The declared key map of a one-layer EAGLE-1/2 checkpoint (yuhuili/EAGLE-* layout); embed_tokens.weight is
# optional there and only checked against the base's embedding (our drafts read the base's).
EAGLE_KEY_MAP = eagle_key_map(1)
EAGLE_OPTIONAL = ("embed_tokens.weight",)


def eagle12_refusals(draft: DraftModel, fmt: str) -> list[str]:
    cfg = draft.cfg
    if not isinstance(draft, EagleV2Draft):
        return [f"it is a {cfg.algorithm} draft; '{fmt}' holds EAGLE-1/2 drafts (export EagleV3 as sglang-eagle3 or speculators)."]
    out = family_refusals(draft)
    hb = cfg.base["hidden_size"]
    if cfg.hidden_size != hb:
        out.append(f"its width {cfg.hidden_size} differs from the base width {hb}; the EAGLE-1/2 layout has no width "
                   "adapter. Train an EagleV2 draft of the base's width (--modeling.draft_hidden_size 0).")
    if draft.lm_head is not None or draft.vocab is not None or cfg.embed != "base":
        out.append(f"it has its own vocabulary ('{cfg.vocab}'); EAGLE-1/2 drafts use the base's embedding and LM head "
                   "(--modeling.vocab base).")
    if cfg.first_input_norm:
        out.append("its layer 0 normalises its input (input_layernorm); the EAGLE-1/2 layout has no such norm, so an "
                   "engine would compute something else. Train with --modeling.draft_first_input_norm false "
                   "(the eagle_v2 preset sets it).")
    if list(cfg.feature_layers) != [LAST]:
        out.append(f"it reads base features {cfg.feature_layers}; EAGLE-1/2 reads the final normed state only ([-1]).")
    return out


def eagle12_state(draft: DraftModel, dtype: torch.dtype | None, fmt: str) -> dict[str, torch.Tensor]:
    state = draft_state(draft, dtype)
    inverse = {ours: theirs for theirs, ours in eagle_key_map(draft.cfg.num_layers).items()}
    out = apply_key_map(state, inverse)
    for name in UNUSED:
        state.pop(name, None)
    nothing_left(fmt, state)
    if "fc.bias" not in out:  # SGLang builds fc with a bias
        out["fc.bias"] = torch.zeros(out["fc.weight"].shape[0], dtype=out["fc.weight"].dtype)
    return out


def to_state_dict(draft: DraftModel, dtype: torch.dtype | None = None,
                  options: ExportOptions | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, tensors) of the SGLang EAGLE-1/2 folder (it names no base: SGLang gets --model-path)."""
    problems = eagle12_refusals(draft, FORMAT)
    if not problems and not same_table(embedding_table(draft), raw_base_embedding(draft.base)):
        problems.append("the base scales its embedding (e.g. Gemma); SGLang gives the draft the base's unscaled table.")
    refuse(FORMAT, problems)
    state = eagle12_state(draft, dtype, FORMAT)
    config = {"architectures": [ARCH], **llama_layer_config(draft),
              "torch_dtype": str(state["fc.weight"].dtype).removeprefix("torch.")}
    return config, state


# ------------------------------------------------------------------ import back

def eagle12_from_state(fmt: str, config: dict, state: dict[str, torch.Tensor], base) -> DraftModel:
    """An EagleV2 DraftModel (no layer-0 input norm, base vocabulary) from EAGLE-1/2 tensors."""
    check_base_fits(fmt, base, config["vocab_size"], config["hidden_size"])
    state = dict(state)
    table = state.pop("embed_tokens.weight", None)
    if table is not None and not same_table(table, raw_base_embedding(base)):
        raise ExportError(f"its embed_tokens.weight differs from the embedding of base '{base.name}': it was trained for "
                          "another base. Pass the right one with --modeling.base_model.")
    sizes = sizes_from_llama_config(config)
    ours = apply_key_map(state, eagle_key_map(sizes["num_layers"]))
    nothing_left(fmt, state)
    if "fc.bias" not in ours:  # trained without bias (config 'bias': false)
        ours["fc.bias"] = torch.zeros(sizes["hidden_size"])
    cfg = DraftConfig(algorithm=EagleV2.name, family="llama", feature_layers=[LAST], base=base.describe(), vocab="base",
                      draft_vocab_size=0, embed="base", first_input_norm=False, **sizes)
    return build_imported(cfg, None, ours, base, may_miss=UNUSED)


def from_state_dict(config: dict, state: dict[str, torch.Tensor], base) -> DraftModel:
    return eagle12_from_state(FORMAT, config, state, base)
