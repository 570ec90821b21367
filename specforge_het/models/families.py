"""Registry of HF decoder families whose layers a draft can be built from.

A family names its config class, decoder layer, RMSNorm and rotary embedding. Classes are
imported from transformers by explicit reference here, never looked up from strings a
user supplies. Adding a family = one `Family(...)` entry + the "tree == chains" test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.models.gemma3 import modeling_gemma3 as g3
from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig
from transformers.models.llama import modeling_llama as ll
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.qwen3 import modeling_qwen3 as q3
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type
    layer_cls: type
    norm_cls: type
    rotary_cls: type
    rotary_call: Callable[[Any, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    extra_config: Callable[[dict], dict]

    def make_config(self, **kw) -> Any:
        """HF config for draft layers: every layer full attention, the draft's own rope
        (plain rope of base theta, or rope_scaling's type and parameters, e.g. llama3)."""
        theta, scaling = kw.pop("rope_theta"), kw.pop("rope_scaling", None)
        kw.update(self.extra_config({"rope": rope_parameters(theta, scaling), "num_layers": kw["num_hidden_layers"]}))
        return self.config_cls(**kw)


def rope_parameters(theta: float, scaling: dict | None = None) -> dict:
    """HF rope_parameters: {'rope_type': 'default', 'rope_theta': theta}, or the scaling's type and parameters."""
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    return {**{k: v for k, v in scaling.items() if k != "rope_theta"}, "rope_theta": theta}


def _plain_rotary(rotary, x, position_ids):
    return rotary(x, position_ids)


def _gemma_rotary(rotary, x, position_ids):
    return rotary(x, position_ids, "full_attention")


def _llama_extra(info: dict) -> dict:
    return {"rope_parameters": dict(info["rope"])}


def _qwen3_extra(info: dict) -> dict:
    return {
        "rope_parameters": dict(info["rope"]),
        "layer_types": ["full_attention"] * info["num_layers"],
        "use_sliding_window": False,
    }


def _gemma3_extra(info: dict) -> dict:
    rope = dict(info["rope"])
    return {
        "rope_parameters": {"full_attention": rope, "sliding_attention": dict(rope)},
        "layer_types": ["full_attention"] * info["num_layers"],
    }


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", LlamaConfig, ll.LlamaDecoderLayer, ll.LlamaRMSNorm, ll.LlamaRotaryEmbedding,
                    _plain_rotary, _llama_extra),
    "qwen3": Family("qwen3", Qwen3Config, q3.Qwen3DecoderLayer, q3.Qwen3RMSNorm, q3.Qwen3RotaryEmbedding,
                    _plain_rotary, _qwen3_extra),
    "gemma3": Family("gemma3", Gemma3TextConfig, g3.Gemma3DecoderLayer, g3.Gemma3RMSNorm, g3.Gemma3RotaryEmbedding,
                     _gemma_rotary, _gemma3_extra),
}

# HF model_type of a pretrained LM -> family name (for init_from and for bases' own family).
MODEL_TYPE_TO_FAMILY = {"llama": "llama", "qwen3": "qwen3", "gemma3_text": "gemma3", "gemma3": "gemma3"}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"Unknown draft family '{name}'. Supported: {sorted(FAMILIES)}.")
    return FAMILIES[name]


def family_config(name: str, *, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
                  head_dim: int, intermediate_size: int, rope_theta: float, rms_norm_eps: float,
                  vocab_size: int, max_position_embeddings: int, attn_implementation: str,
                  rope_scaling: dict | None = None) -> Any:
    fam = get_family(name)
    cfg = fam.make_config(
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, head_dim=head_dim, intermediate_size=intermediate_size,
        rope_theta=rope_theta, rope_scaling=rope_scaling, rms_norm_eps=rms_norm_eps, vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    if name == "gemma3":
        cfg.query_pre_attn_scalar = head_dim
    cfg._attn_implementation = attn_implementation
    return cfg
