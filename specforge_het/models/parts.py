"""Reusable draft parts: the decoder-layer stack, width adapters, and EAGLE-3's fused first layer.

Draft classes (one per algorithm, in `algorithms/<name>/model.py`) are assembled from these; nothing
here knows an algorithm. State-dict names are those of the HF layers (`layers.{i}.self_attn.q_proj...`),
so draft folders and engine exports read the same tensors whichever class holds them.
"""

from __future__ import annotations

import torch
from torch import nn

from specforge_het.models.cache import Cache
from specforge_het.models.hf_compat import cache_kwarg
from specforge_het.models.lean import LEAN_LAYERS, layer_forward, on_one_device


def width_adapter(in_features: int, out_features: int, bias: bool = False) -> nn.Linear:
    """A linear map between widths (base features -> draft width, draft width -> base width, ...)."""
    return nn.Linear(in_features, out_features, bias=bias)


def make_layers(family, hf_config, num_layers: int) -> nn.ModuleList:
    """`num_layers` decoder layers of `family`, as HF builds them."""
    return nn.ModuleList(family.layer_cls(hf_config, i) for i in range(num_layers))


class FusedInput(nn.Module):
    """EAGLE-3's layer-0 input: cat(embed_norm(token embedding), hidden_norm(hidden)) -> 2 x width."""

    def __init__(self, norm_cls: type, width: int, eps: float):
        super().__init__()
        self.embed_norm = norm_cls(width, eps=eps)
        self.hidden_norm = norm_cls(width, eps=eps)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embed_norm(embeds), self.hidden_norm(hidden)], dim=-1)


class _WithEmbeds:
    """One call's view of a FusedFirstLayer with its token embeddings bound: it looks like the HF layer
    it was made from (its `input_layernorm(h)` is the fused input), so the lean forward (models/lean.py)
    and the TTT layer run it unchanged. Made per call and dropped after it: nothing is stored."""

    def __init__(self, layer: FusedFirstLayer, embeds: torch.Tensor):
        self._layer, self._embeds = layer, embeds

    def __getattr__(self, name: str):
        return getattr(self._layer, name)

    def input_layernorm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._layer.input_layernorm(self._embeds, hidden)


class FusedFirstLayer(nn.Module):
    """A decoder layer whose attention reads cat(token embedding, hidden) (2 x width), residual on hidden.

    Takes over the sub-modules of an HF layer of the draft's family (same state-dict names) and widens
    q/k/v to 2 x width; `forward(hidden, embeds, ...)` takes the embeddings as an argument.
    """

    takes_embeds = True  # read through FSDP wrappers too (they forward attribute lookups)

    def __init__(self, layer: nn.Module, norm_cls: type, width: int, eps: float):
        super().__init__()
        self.layer_cls = type(layer)
        for name, value in vars(layer).items():  # plain attributes HF's forward reads (hidden_size, config, ...)
            if not name.startswith("_") and name != "training":
                setattr(self, name, value)
        for name, child in layer.named_children():
            setattr(self, name, child)
        self.input_layernorm = FusedInput(norm_cls, width, eps)
        attn = self.self_attn
        for name in ("q_proj", "k_proj", "v_proj"):
            old: nn.Linear = getattr(attn, name)
            setattr(attn, name, nn.Linear(2 * width, old.out_features, bias=old.bias is not None))

    def bind(self, embeds: torch.Tensor) -> _WithEmbeds:
        return _WithEmbeds(self, embeds)

    def forward(self, hidden: torch.Tensor, embeds: torch.Tensor, attention_mask=None, position_ids=None,
                position_embeddings=None, use_cache: bool = False, cache=None) -> torch.Tensor:
        """The family layer's computation in HF's order, its attention over the fused input."""
        x = self.input_layernorm(embeds, hidden)
        out = self.self_attn(hidden_states=x, position_embeddings=position_embeddings, attention_mask=attention_mask,
                             position_ids=position_ids, use_cache=use_cache,
                             **{cache_kwarg(self.self_attn): cache})[0]
        if hasattr(self, "pre_feedforward_layernorm"):  # Gemma3: sandwich norms
            hidden = hidden + self.post_attention_layernorm(out)
            return hidden + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(hidden)))
        hidden = hidden + out
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


def layer_input(layer: nn.Module, hidden: torch.Tensor, embeds: torch.Tensor | None):
    """The object to run as `layer` for one call: the layer itself, or a fused layer with `embeds` bound."""
    return layer.bind(embeds) if getattr(layer, "takes_embeds", False) else layer


def stack_supports_lean(layers, config) -> bool:
    """`lean.supports_lean` for a draft stack, whose first layer may be a FusedFirstLayer of a lean family
    (exact types: a layer FSDP has wrapped or re-classed runs through its own forward)."""
    kinds = [layer.layer_cls if type(layer) is FusedFirstLayer else type(layer) for layer in layers]
    return (len(kinds) > 0 and all(k in LEAN_LAYERS for k in kinds)
            and getattr(config, "_attn_implementation", None) == "sdpa"
            and getattr(config, "attn_logit_softcapping", None) is None
            and on_one_device(layers))


def run_layers(layers, hidden: torch.Tensor, embeds: torch.Tensor | None, pos_emb, position_ids: torch.Tensor,
               attention_mask=None, cache: Cache | None = None) -> torch.Tensor:
    """The layer stack on hidden [B, S, H]: through the lean forward when the cache is a `KVCache` (`cache.kv`;
    batch size 1), else through HF's layer forward (filling `cache.hf`, or no cache). `embeds` feed a fused
    first layer."""
    h = hidden
    kv = None if cache is None else cache.kv
    if kv is not None:
        for i, layer in enumerate(layers):
            h = layer_forward(layer_input(layer, h, embeds), h, *pos_emb, attention_mask, kv, i)
        kv.advance(h.shape[1])
        return h
    hf = None if cache is None else cache.hf
    for layer in layers:
        kw = dict(attention_mask=attention_mask, position_ids=position_ids, use_cache=hf is not None,
                  position_embeddings=pos_emb)
        if getattr(layer, "takes_embeds", False):
            h = layer(h, embeds, **kw, cache=hf)
        else:
            h = layer(h, **kw, **{cache_kwarg(layer): hf})
    return h
