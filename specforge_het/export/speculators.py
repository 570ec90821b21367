"""vLLM speculators format (`speculators_model_type: eagle3`, architectures ['Eagle3Speculator']).

Same tensors as SGLang EAGLE-3 with `layers.0.` instead of `midlayer.`; the config nests the draft
layer's HF config in `transformer_layer_config` (its vocab_size is the base's), names the base as
the verifier, and writes `norm_before_residual: false` explicitly (vLLM assumes true when it is
missing, which would normalise the residual our drafts never normalise).
`eagle_aux_hidden_state_layer_ids` uses vLLM's convention (the input of base layer i = HF
hidden_states[i]), which is our feature-layer index as is. vLLM loads embed_tokens whenever the
folder has it, so a foreign vocabulary or a scaled base embedding exports at any width.
"""

from __future__ import annotations

import torch

from specforge_het.export.common import llama_layer_config, refuse
from specforge_het.export.sglang_eagle3 import eagle3_from_state, eagle3_refusals, eagle3_state, needs_embed_tokens
from specforge_het.models.draft import DraftModel

FORMAT = "speculators"
ARCH = "Eagle3Speculator"


def speculators_config(draft: DraftModel, verifier_architectures: list[str], torch_dtype: str,
                       speculative_tokens: int = 3) -> dict:
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
            "verifier": {"name_or_path": cfg.base["name"], "architectures": list(verifier_architectures)},
        },
        "torch_dtype": torch_dtype,
    }


def to_state_dict(draft: DraftModel, dtype: torch.dtype | None = None,
                  speculative_tokens: int = 3) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, tensors) of the speculators folder."""
    refuse(FORMAT, eagle3_refusals(draft, FORMAT))
    state = eagle3_state(draft, "layers.0.", dtype, FORMAT, needs_embed_tokens(draft))
    archs = list(getattr(draft.base.config, "architectures", None) or [type(draft.base.model).__name__])
    dtype_name = str(state["fc.weight"].dtype).removeprefix("torch.")
    return speculators_config(draft, archs, dtype_name, speculative_tokens), state


def from_state_dict(config: dict, state: dict[str, torch.Tensor], base) -> DraftModel:
    layer = config["transformer_layer_config"]
    return eagle3_from_state(FORMAT, layer, list(config["eagle_aux_hidden_state_layer_ids"]),
                             config["draft_vocab_size"], config["target_hidden_size"], state, base, "layers.0.")
