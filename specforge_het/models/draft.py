"""Draft model: decoder layers of any registered HF family, its own rotary embedding,
width adapters to and from the base, and a vocabulary adapter onto base ids.

The draft never owns base weights: when it uses the base's embedding or LM head it reads
them from the attached base (`attach`), and they are not saved with the draft.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from specforge_het.algorithms import get_algorithm
from specforge_het.models.adapters import VocabAdapter
from specforge_het.models.families import family_config, get_family
from specforge_het.models.hf_compat import cache_kwarg
from specforge_het.models.lean import KVCache, layer_forward, supports_lean


@dataclass
class DraftConfig:
    algorithm: str
    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float
    feature_layers: list[int]
    base: dict[str, Any]  # name, model_type, hidden_size, vocab_size, num_layers
    vocab: str = "reduced"  # base | reduced | foreign
    draft_vocab_size: int = 0  # rows of the draft's own head (0 = the base head is used)
    embed: str = "base"  # base | base_proj | foreign
    embed_vocab_size: int = 0  # size of the foreign tokenizer's embedding table
    input_map_width: int = 0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768  # new drafts take their base's (models/build.py)
    rope_scaling: dict[str, Any] | None = None  # HF rope type + parameters (e.g. llama3) besides theta; None = plain rope
    attn_implementation: str = "sdpa"
    draft_tokenizer: str = ""
    init_from: str = ""
    first_input_norm: bool = True  # False: layer 0 reads fc's output without input_layernorm (EAGLE-1/2 layout)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DraftConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known - {"format", "format_version"})
        if unknown:
            raise ValueError(f"draft config.json has unknown keys {unknown}; it was written by another version.")
        return cls(**{k: v for k, v in data.items() if k in known})


class FusedInputNorm(nn.Module):
    """EAGLE-3 layer-0 input: cat(embed_norm(token embedding), hidden_norm(hidden)) -> 2 x width.

    Stands in for the layer's `input_layernorm`; the draft sets `embeds` right before the call.
    """

    def __init__(self, norm_cls: type, width: int, eps: float):
        super().__init__()
        self.embed_norm = norm_cls(width, eps=eps)
        self.hidden_norm = norm_cls(width, eps=eps)
        self.embeds: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.embeds is None:
            raise RuntimeError("FusedInputNorm called without token embeddings (draft.forward sets them).")
        return torch.cat([self.embed_norm(self.embeds), self.hidden_norm(hidden)], dim=-1)


class DraftModel(nn.Module):
    def __init__(self, cfg: DraftConfig, vocab: VocabAdapter | None = None):
        super().__init__()
        self.cfg = cfg
        self.algorithm = get_algorithm(cfg.algorithm)
        fam = get_family(cfg.family)
        self.family = fam
        self.hf_config = family_config(
            cfg.family, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size,
            rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps, vocab_size=max(cfg.draft_vocab_size, 1),
            max_position_embeddings=cfg.max_position_embeddings, attn_implementation=cfg.attn_implementation,
            rope_scaling=cfg.rope_scaling,
        )
        hb, hd = cfg.base["hidden_size"], cfg.hidden_size
        self._base: list = []  # the attached BaseModel (not a submodule: never saved)
        self.embed_tokens = nn.Embedding(cfg.embed_vocab_size, hd) if cfg.embed == "foreign" else None
        self.embed_proj = nn.Linear(hb, hd, bias=False) if cfg.embed == "base_proj" else None
        self.vocab = vocab
        self.fc = nn.Linear(self.algorithm.fc_in_features(self), hd, bias=self.algorithm.fc_bias)
        self.layers = nn.ModuleList(fam.layer_cls(self.hf_config, i) for i in range(cfg.num_layers))
        self.rotary = fam.rotary_cls(self.hf_config)
        self.norm = fam.norm_cls(hd, eps=cfg.rms_norm_eps)
        self.to_base = nn.Linear(hd, hb, bias=False) if (hd != hb and cfg.algorithm == "eagle_v2") else None
        self.lm_head = nn.Linear(hd, cfg.draft_vocab_size, bias=False) if cfg.draft_vocab_size else None
        if self.algorithm.fused_first_layer:
            self._fuse_first_layer()
        elif not cfg.first_input_norm:
            self.layers[0].input_layernorm = nn.Identity()  # EAGLE-1/2: no norm between fc and layer 0

    def _fuse_first_layer(self) -> None:
        layer, hd = self.layers[0], self.cfg.hidden_size
        layer.input_layernorm = FusedInputNorm(self.family.norm_cls, hd, self.cfg.rms_norm_eps)
        for name in ("q_proj", "k_proj", "v_proj"):
            old: nn.Linear = getattr(layer.self_attn, name)
            setattr(layer.self_attn, name, nn.Linear(2 * hd, old.out_features, bias=old.bias is not None))

    # ------------------------------------------------------------ base attachment
    def attach(self, base) -> DraftModel:
        """Attach the base (checked against the base this draft was made for)."""
        check_base_matches(self.cfg, base.describe())
        self._base = [base]
        return self

    @property
    def base(self):
        if not self._base:
            raise RuntimeError("This draft needs its base model: call draft.attach(base) first.")
        return self._base[0]

    @property
    def embed_width(self) -> int:
        return self.cfg.hidden_size if self.cfg.embed in ("foreign", "base_proj") else self.cfg.base["hidden_size"]

    # ------------------------------------------------------------ pieces
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embedding of base token ids, in the draft's input space."""
        if self.cfg.embed == "foreign":
            return self.vocab.embed_foreign(input_ids, self.embed_tokens)
        emb = self.base.embed(input_ids)
        return self.embed_proj(emb) if self.embed_proj is not None else emb

    def predicted_feature(self, hidden_out: torch.Tensor) -> torch.Tensor:
        return self.to_base(hidden_out) if self.to_base is not None else hidden_out

    def base_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.base.head(hidden)

    def input_from_base(self, input_ids, features):
        return self.algorithm.input_from_base(self, input_ids, features)

    def input_from_self(self, input_ids, hidden_out):
        return self.algorithm.input_from_self(self, input_ids, hidden_out)

    def logits(self, hidden_out: torch.Tensor) -> torch.Tensor:
        return self.algorithm.logits(self, hidden_out)

    def to_base_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Draft vocabulary rows -> base ids (identity when the base head is used)."""
        return draft_ids if self.vocab is None else self.vocab.to_base(draft_ids)

    # ------------------------------------------------------------ forward
    def new_cache(self, capacity: int = 0):
        """Draft KV cache for inference: a preallocated KVCache (lean forward) where the layers allow it."""
        from transformers import DynamicCache

        if supports_lean(self.layers, self.hf_config):
            return KVCache(len(self.layers), capacity or 256)
        return DynamicCache()

    def forward(self, input_ids, hidden_in, position_ids, attention_mask=None, cache=None) -> torch.Tensor:
        """Run the draft layers. input_ids [B, S] base ids, hidden_in [B, S, Hd] -> hidden_out [B, S, Hd].

        attention_mask: 4-D [B, 1, S, past+S] (additive, or bool with True = attend) or None for plain
        causal (no cache). With a `KVCache` (batch size 1) the layers run through the lean forward.
        """
        fused = self.layers[0].input_layernorm if self.algorithm.fused_first_layer else None
        if fused is not None:
            fused.embeds = self.embed(input_ids)
        h = hidden_in
        pos_emb = self.family.rotary_call(self.rotary, h, position_ids)
        try:
            if isinstance(cache, KVCache):
                for i, layer in enumerate(self.layers):
                    h = layer_forward(layer, h, *pos_emb, attention_mask, cache, i)
                cache.advance(h.shape[1])
                return h
            for layer in self.layers:
                h = layer(h, attention_mask=attention_mask, position_ids=position_ids, use_cache=cache is not None,
                          position_embeddings=pos_emb, **{cache_kwarg(layer): cache})
        finally:
            if fused is not None:
                fused.embeds = None
        return h

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything the draft owns (weights and vocabulary buffers), LoRA merged."""
        from specforge_het.models.build import merged_state_dict

        return merged_state_dict(self)


def check_base_matches(cfg: DraftConfig, base_desc: dict[str, Any]) -> None:
    """Fail with both shapes when a draft is put on a base it was not made for."""
    keys = ("hidden_size", "vocab_size")
    want = {k: cfg.base.get(k) for k in keys}
    got = {k: base_desc.get(k) for k in keys}
    need_layers = max((i for i in cfg.feature_layers), default=0)
    if want != got or base_desc["num_layers"] < need_layers:
        raise ValueError(
            f"Draft was made for base '{cfg.base.get('name')}' {want} (num_layers {cfg.base.get('num_layers')}) "
            f"but the base given is '{base_desc.get('name')}' {got} (num_layers {base_desc.get('num_layers')}). "
            "Load the draft with the base it was trained for (see the draft's config.json 'base')."
        )
