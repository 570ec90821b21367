"""vLLM speculators format (`speculators_model_type: eagle3`, architectures ['Eagle3Speculator']).

Same tensors as SGLang EAGLE-3 with `layers.0.` instead of `midlayer.`; the config nests the draft
layer's HF config in `transformer_layer_config` (its vocab_size is the base's), names the base as
the verifier, and writes `norm_before_residual: false` explicitly (vLLM assumes true when it is
missing, which would normalise the residual our drafts never normalise).
`eagle_aux_hidden_state_layer_ids` uses vLLM's convention (the input of base layer i = HF
hidden_states[i]), which is our feature-layer index as is. vLLM releases with PR #28549 (v0.12.0
and later) keep a folder's embed_tokens when it differs from the target's, so a foreign vocabulary
or a scaled base embedding exports at any width; older releases replace a same-width table.
vLLM runs EAGLE-3 only for targets whose model type it lists (VLLM_EAGLE3_TARGETS).
"""

from __future__ import annotations

import torch

from specforge_het.export.common import ExportOptions, llama_layer_config, refuse, text_config, verifier_name, warn
from specforge_het.export.sglang_eagle3 import eagle3_from_state, eagle3_refusals, eagle3_state, needs_embed_tokens
from specforge_het.models.draft import DraftModel

FORMAT = "speculators"
ARCH = "Eagle3Speculator"
# vLLM's SpeculativeConfig accepts method 'eagle3' only when one of these is a substring of the target's
# hf_text_config.model_type (vllm/config/speculative.py, `eagle3_target_supported`, later
# `aux_hidden_states_supported`); v0.10/v0.11 listed only the first four. Gemma3 ('gemma3_text') is on no list.
VLLM_EAGLE3_TARGETS = ("llama", "qwen", "minicpm", "gpt_oss", "hunyuan_vl", "hunyuan_v1_dense", "afmoe", "nemotron_h",
                       "deepseek_v2", "deepseek_v3", "kimi_k2", "kimi_k25", "minimax_m2", "gemma4")
VLLM_OWN_EMBED = "v0.12.0"  # first vLLM release with PR #28549 (keeps a draft's own same-shape embed_tokens)


def vllm_target_problem(draft: DraftModel) -> str:
    """Why vLLM would refuse EAGLE-3 on this base ('' when its model type is listed)."""
    model_type = getattr(text_config(draft.base.config), "model_type", "")
    if any(t in model_type for t in VLLM_EAGLE3_TARGETS):
        return ""
    return (f"vLLM runs EAGLE-3 only for targets whose model_type contains one of {list(VLLM_EAGLE3_TARGETS)} "
            f"(vllm/config/speculative.py; v0.10/v0.11: the first four), and the base's is '{model_type}': vLLM would "
            "refuse it at startup.")


def speculators_config(draft: DraftModel, verifier_architectures: list[str], torch_dtype: str,
                       speculative_tokens: int = 3, verifier: str = "") -> dict:
    cfg = draft.cfg
    layer = {"architectures": ["LlamaForCausalLM"], **llama_layer_config(draft)}
    return {
        "speculators_model_type": "eagle3",
        "architectures": [ARCH],
        "transformer_layer_config": layer,
        "draft_vocab_size": draft.vocab.draft_vocab_size,
        "target_hidden_size": cfg.base["hidden_size"],
        "norm_before_residual": False,
        "eagle_aux_hidden_state_layer_ids": list(cfg.feature_layers),
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": speculative_tokens,
                                  "verifier_accept_k": 1, "accept_tolerance": 0.0}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier or draft.base.name, "architectures": list(verifier_architectures)},
        },
        "torch_dtype": torch_dtype,
    }


def to_state_dict(draft: DraftModel, dtype: torch.dtype | None = None, options: ExportOptions | None = None,
                  speculative_tokens: int = 3) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, tensors) of the speculators folder; the verifier is the engine-loadable base name."""
    options = options or ExportOptions()
    problems = eagle3_refusals(draft, FORMAT)
    target = vllm_target_problem(draft) if not problems else ""
    if target and options.force:
        warn(target + " Written anyway (--force).")
    elif target:
        problems.append(target + " Serve this base with another engine, or pass --force if your vLLM build accepts it.")
    verifier = verifier_name(draft, options)
    if verifier is None:
        problems.append("the folder must name its verifier (the base) as a Hub id or a folder: pass --verifier NAME.")
    refuse(FORMAT, problems)
    embed = needs_embed_tokens(draft)
    if embed and draft.cfg.hidden_size == draft.cfg.base["hidden_size"]:
        warn(f"this draft's embedding of base ids is its own (a foreign vocabulary, or a scaled base embedding) at "
             f"the base's width: it is written as embed_tokens, which vLLM {VLLM_OWN_EMBED} and later keep (PR #28549), "
             "while older vLLM replaces a same-shape table with the base's and the draft proposes almost nothing "
             f"(acceptance length ~1). Serve with vLLM >= {VLLM_OWN_EMBED}.")
    state = eagle3_state(draft, "layers.0.", dtype, FORMAT, embed)
    archs = list(getattr(draft.base.config, "architectures", None) or [type(draft.base.model).__name__])
    dtype_name = str(state["fc.weight"].dtype).removeprefix("torch.")
    return speculators_config(draft, archs, dtype_name, speculative_tokens, verifier), state


def from_state_dict(config: dict, state: dict[str, torch.Tensor], base) -> DraftModel:
    layer = config["transformer_layer_config"]
    return eagle3_from_state(FORMAT, layer, list(config["eagle_aux_hidden_state_layer_ids"]),
                             config["draft_vocab_size"], config["target_hidden_size"], state, base, "layers.0.")
