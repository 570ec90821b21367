"""One KV-cache protocol for the decoder, the proposers and the models, and its two implementations.

`Cache` is what everyone outside the forwards uses of a cache: its length, rolling back to the
accepted tree path (`keep`) or to a prefix (`crop`), the mask format its forward attends with
(`attention_mask`), and a read-only view of its entries (`layers`). Call sites call these methods;
nothing branches on a cache's class.

* `KVCache`: preallocated per-layer buffers with rollback by index, which the lean forward writes
  (models/lean.py; batch size 1). Masks are boolean (True = attend).
* `HFCache`: an adapter around an HF cache (a `DynamicCache` by default), which HF's forward fills
  (bases without a lean forward, sharded bases, training). Masks are additive.

Which forward runs is the cache's one structural fact, read by the two model entry points
(`BaseModel.forward`, `parts.run_layers`): `cache.kv` is the `KVCache` the lean forward writes, or None,
and then `cache.hf` is the object handed to HF's forward as its cache. Neither cache evicts: sliding
windows are enforced by the masks, so a tree can be rolled back past a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import DynamicCache


@runtime_checkable
class Cache(Protocol):
    """A KV cache of one sequence (batch size 1 for the decoder's caches)."""

    @property
    def kv(self) -> KVCache | None:
        """The buffers the lean forward writes (a `KVCache` is its own), or None: HF's forward fills `hf`."""
        ...

    @property
    def hf(self) -> Any:
        """The object HF's forward takes as its cache (None for a `KVCache`)."""
        ...

    @property
    def layers(self) -> Sequence[Any]:
        """Per layer, an object with the valid `keys` / `values` [B, H_kv, length, D] (None before a write)."""
        ...

    def get_seq_length(self) -> int:
        """Entries held (the same in every layer)."""
        ...

    def keep(self, past_len: int, keep: torch.Tensor, contiguous: bool | None = None) -> None:
        """Keep the first `past_len` entries plus the new entries at offsets `keep` [n] (sorted) after them;
        drop the rest (after verify: only the accepted path stays). `contiguous`: `keep` is 0..n-1 (nothing
        moves), when the caller knows it on the host already; None reads it from `keep`."""
        ...

    def crop(self, length: int) -> None:
        """Keep the first `length` entries (at most the entries held)."""
        ...

    def attention_mask(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The mask this cache's forward attends with, from bool `allowed` [S, K] (True = attend):
        [1, 1, S, K], boolean for the lean forward, additive in `dtype` for HF's."""
        ...


def is_prefix(keep: torch.Tensor) -> bool:
    """True when the sorted offsets `keep` are 0..n-1 (one host read; True for none)."""
    n = keep.shape[0]
    return bool(n == 0 or keep[-1].item() == n - 1)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [S, K] (True = attend) -> additive mask [1, 1, S, K]: 0 where allowed, dtype's minimum elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)[None, None]


class _LayerView:
    """What HF's DynamicCache layers expose: the valid keys/values of one layer."""

    def __init__(self, cache: KVCache, i: int):
        self._cache, self._i = cache, i

    @property
    def keys(self) -> torch.Tensor | None:
        k = self._cache.k[self._i]
        return None if k is None else k[:, :, : self._cache.length]

    @property
    def values(self) -> torch.Tensor | None:
        v = self._cache.v[self._i]
        return None if v is None else v[:, :, : self._cache.length]


class KVCache:
    """Per-layer K/V buffers [1, H_kv, capacity, D] holding `length` valid entries (batch size 1).

    A forward writes its S new entries at [length, length+S) in every layer, then `advance(S)`.
    Capacity doubles when a write would overflow (rare when sized from the request up front).
    Rolling back moves at most the kept new entries and sets the length: no reallocation.
    """

    hf = None  # never handed to HF's forward

    def __init__(self, num_layers: int, capacity: int = 256):
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0
        self.capacity = max(int(capacity), 16)

    @property
    def kv(self) -> KVCache:
        return self

    def get_seq_length(self) -> int:
        return self.length

    @property
    def layers(self) -> list[_LayerView]:
        return [_LayerView(self, i) for i in range(len(self.k))]

    def attention_mask(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return allowed[None, None]

    def write(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer i's new k, v [1, H_kv, S, D] after the valid entries; return all keys/values so far."""
        end = self.length + k.shape[2]
        self._ensure(i, end, k.shape[1], k.shape[3], k)
        buf_k, buf_v = self.k[i], self.v[i]
        buf_k[:, :, self.length : end] = k  # type: ignore[index]  # made by _ensure
        buf_v[:, :, self.length : end] = v  # type: ignore[index]
        return buf_k[:, :, :end], buf_v[:, :, :end]  # type: ignore[index]

    def reserve(self, end: int, like: torch.Tensor, heads_dims: Sequence[tuple[int, int]]) -> None:
        """Buffers for at least `end` entries in every layer, made (dtype and device of `like`; `heads_dims`
        (H_kv, D) per layer) or grown here, as `write` would: for a caller that writes them itself."""
        for i, (heads, dim) in enumerate(heads_dims):
            self._ensure(i, end, heads, dim, like)

    def _ensure(self, i: int, end: int, heads: int, dim: int, like: torch.Tensor) -> None:
        buf_k, buf_v = self.k[i], self.v[i]
        if buf_k is not None and end <= buf_k.shape[2]:
            return
        cap = self.capacity
        while cap < end:  # doubling: a cache sized too small reallocates O(log n) times
            cap *= 2
        self.capacity = cap
        new_k = like.new_empty(1, heads, cap, dim)
        new_v = like.new_empty(1, heads, cap, dim)
        if buf_k is not None:
            new_k[:, :, : self.length] = buf_k[:, :, : self.length]
            new_v[:, :, : self.length] = buf_v[:, :, : self.length]  # type: ignore[index]
        self.k[i], self.v[i] = new_k, new_v

    def advance(self, s: int) -> None:
        self.length += s

    def keep(self, past_len: int, keep: torch.Tensor, contiguous: bool | None = None) -> None:
        n = keep.shape[0]
        if not (is_prefix(keep) if contiguous is None else contiguous):
            src = keep + past_len
            for buf in (*self.k, *self.v):
                if buf is not None:
                    buf[:, :, past_len : past_len + n] = buf.index_select(2, src)
        self.length = past_len + n

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)


class HFCache:
    """The `Cache` protocol over an HF cache object (`hf`; a new `DynamicCache` by default), for HF's forward.

    Rollback slices or index-selects each layer's keys/values where they are (a sharded base keeps each
    layer's entries on that layer's device)."""

    kv = None  # HF's forward fills `hf`

    def __init__(self, hf: Any = None):
        self.hf = DynamicCache() if hf is None else hf

    @property
    def layers(self) -> Sequence[Any]:
        return self.hf.layers

    def get_seq_length(self) -> int:
        return self.hf.get_seq_length()

    def attention_mask(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return additive_mask(allowed, dtype)

    def keep(self, past_len: int, keep: torch.Tensor, contiguous: bool | None = None) -> None:
        if contiguous is None:
            contiguous = is_prefix(keep)
        if contiguous:
            self._cut(past_len + keep.shape[0])
            return
        index = torch.cat([torch.arange(past_len, device=keep.device), past_len + keep])
        for layer in self._filled():
            layer.keys = layer.keys.index_select(2, index.to(layer.keys.device))
            layer.values = layer.values.index_select(2, index.to(layer.values.device))

    def crop(self, length: int) -> None:
        self._cut(length)

    def _cut(self, end: int) -> None:
        for layer in self._filled():
            layer.keys = layer.keys[:, :, :end]
            layer.values = layer.values[:, :, :end]

    def _filled(self) -> list[Any]:
        return [layer for layer in self.hf.layers if layer.keys is not None and layer.keys.numel() > 0]
