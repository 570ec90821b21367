"""The draft's saved schema (`DraftConfig`, the config.json of a draft folder) and `DraftModel`, the
parts every draft has. Each algorithm's own class (algorithms/<name>/model.py) subclasses it; this
module knows no algorithm.

The draft never owns base weights: when it uses the base's embedding or LM head it reads
them from the attached base (`attach`), and they are not saved with the draft.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from specforge_het.models import compiled
from specforge_het.models.adapters import VocabAdapter
from specforge_het.models.cache import Cache, HFCache, KVCache
from specforge_het.models.families import family_config, get_family
from specforge_het.models.parts import make_layers, run_layers, stack_supports_lean, width_adapter


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


class DraftModel(nn.Module):
    """What every draft has: decoder layers of a registered HF family with their own rotary embedding and
    final norm, an embedding of base ids (the base's, projected, or a foreign table), an optional own LM
    head over a draft vocabulary and the vocabulary adapter onto base ids.

    One subclass per algorithm (`algorithms/<name>/model.py`) adds its adapters and defines how the draft
    reads base features and its own outputs (`input_from_base`, `input_from_self`) and its `logits`.
    The draft never owns base weights: it reads the base's embedding or head from the attached base.
    """

    def __init__(self, cfg: DraftConfig, vocab: VocabAdapter | None = None):
        super().__init__()
        self.cfg = cfg
        self.family = get_family(cfg.family)
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
        self.embed_proj = width_adapter(hb, hd) if cfg.embed == "base_proj" else None
        self.vocab = vocab
        self.add_input_adapters()
        self.layers = make_layers(self.family, self.hf_config, cfg.num_layers)
        self.rotary = self.family.rotary_cls(self.hf_config)
        self.norm = self.family.norm_cls(hd, eps=cfg.rms_norm_eps)
        self.add_output_adapters()
        self.lm_head = nn.Linear(hd, cfg.draft_vocab_size, bias=False) if cfg.draft_vocab_size else None
        self.adapt_layers()

    # ------------------------------------------------------------ what an algorithm's class adds
    def add_input_adapters(self) -> None:
        """Modules between the inputs and the layers (registered before the layers)."""

    def add_output_adapters(self) -> None:
        """Modules after the layers, besides the final norm and the own head."""

    def adapt_layers(self) -> None:
        """Change the layer stack (e.g. a fused first layer) once it is built."""

    def input_from_base(self, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Layer input [B, S, Hd] from the next tokens [B, S] and base features [B, S, F*Hb]."""
        raise NotImplementedError

    def input_from_self(self, input_ids: torch.Tensor, hidden_out: torch.Tensor) -> torch.Tensor:
        """Layer input for a later draft step, from the draft's own previous output [B, S, Hd]."""
        raise NotImplementedError

    def logits(self, hidden_out: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary (or over the base vocabulary when the draft has no own head)."""
        raise NotImplementedError

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

    def to_base_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Draft vocabulary rows -> base ids (identity when the base head is used)."""
        return draft_ids if self.vocab is None else self.vocab.to_base(draft_ids)

    @property
    def fused_input(self) -> bool:
        """True when the first layer reads the token embeddings besides the hidden stream."""
        return len(self.layers) > 0 and getattr(self.layers[0], "takes_embeds", False)

    # ------------------------------------------------------------ forward
    def lean(self) -> bool:
        """The layers run through the lean forward (models/lean.py) with a preallocated KVCache."""
        return stack_supports_lean(self.layers, self.hf_config)

    def new_cache(self, capacity: int = 0) -> Cache:
        """Draft KV cache for inference: a preallocated KVCache (lean forward) where the layers allow it,
        else an HFCache (HF's layer forward)."""
        return KVCache(len(self.layers), capacity or 256) if self.lean() else HFCache()

    def forward(self, input_ids, hidden_in, position_ids, attention_mask=None, cache: Cache | None = None) -> torch.Tensor:
        """Run the draft layers. input_ids [B, S] base ids, hidden_in [B, S, Hd] -> hidden_out [B, S, Hd].

        attention_mask: 4-D [B, 1, S, past+S] in the cache's format (`cache.attention_mask`: bool with
        True = attend for a KVCache, additive for an HFCache) or None for plain causal (no cache).
        With a `KVCache` (batch size 1) the layers run through the lean forward.
        """
        embeds = self.embed(input_ids) if self.fused_input else None
        pos_emb = self.family.rotary_call(self.rotary, hidden_in, position_ids)
        kv = None if cache is None else cache.kv
        if (kv is not None and attention_mask is not None  # the decoder's `compile` fast path
                and compiled.applies(self.layers, hidden_in.shape[1], kv.length)):
            full = {"full_attention": attention_mask}
            h = compiled.run(self.layers, hidden_in, embeds, {"full_attention": pos_emb}, full, kv)[-1]
            kv.advance(hidden_in.shape[1])
            return h
        return run_layers(self.layers, hidden_in, embeds, pos_emb, position_ids, attention_mask, cache)

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
