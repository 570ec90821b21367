"""A lean forward over HF decoder layers, and a preallocated KV cache with rollback by index.

HF's model forward costs a few milliseconds of Python per call on top of the matmuls (mask
creation, cache objects, per-layer kwargs plumbing, `repeat_kv` copies). Speculative decoding
calls the base with 1-16 tokens, so that overhead is a large share of every step on a CPU.
`run_layers` calls the layers' own sub-modules (norms, projections, MLP, rotary) in HF's order
with the same tensor operations, so its outputs equal HF's (the tests check logits and greedy
tokens); only the glue is new:

* `KVCache` (models/cache.py) holds one preallocated K/V buffer per layer [1, H_kv, capacity, D]
  and a length. Appending writes in place; rolling back to an accepted tree path moves a few
  entries and sets the length: no concatenation, no re-allocation per step.
* masks are boolean, built once per forward for all layers; a single new token with no window
  to enforce needs none, and neither does a plain prefill (causal, empty cache, window not
  reached): it runs with `is_causal=True`.
* how each call reaches SDPA is `sdpa_plan`'s choice (one small pure function, see there): on a
  CPU grouped-query attention runs in SDPA (`enable_gqa`) without copying K/V per head; on CUDA a
  masked call expands K/V per head first (HF's `repeat_kv`), because SDPA takes `enable_gqa` only
  in its flash kernel, which takes no mask: anything else would fall back to the quadratic math kernel.

`packed_linears` is the other half, a fast path that only the decoder's caller opts into
(`--inference.fast_paths auto`, inference/fast_paths.py); nothing packs a model on construction.
On a CPU, MKL's fp32 GEMM for 4-64 rows re-packs the weight on every call, so verifying a few
tokens cost up to ~1.7x decoding 1 (1-3 rows take a cheaper path and are left alone). MKL's packed
GEMM on weights packed once per row bucket (4, 8, 16, 32, 64; rows padded up) removes that, with the
same kernels: results agree with F.linear to float rounding.
Without MKL packing, a oneDNN reorder is the fallback. Packing is scoped: when the block ends every
nn.Linear is HF's plain module again (the packed copies, one per bucket used, stay cached beside them).

Supported layers: Llama, Qwen3 and Gemma3 (sliding windows included) with SDPA attention, all on
one device without accelerate hooks; anything else (a base sharded with a device map included) runs
through HF (`supports_lean` says which).
"""

from __future__ import annotations

import contextlib
import functools
import types
import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.gemma3 import modeling_gemma3 as g3
from transformers.models.llama import modeling_llama as ll
from transformers.models.qwen3 import modeling_qwen3 as q3

from specforge_het.models.cache import KVCache

LEAN_LAYERS = (ll.LlamaDecoderLayer, q3.Qwen3DecoderLayer, g3.Gemma3DecoderLayer)


def supports_lean(layers, config) -> bool:
    """True when every layer is a known family layer, attention is SDPA, no logit softcapping is set,
    and the layers sit on one device with no accelerate hooks (a sharded or offloaded base needs HF's
    forward: the hooks that move activations and weights run only when HF calls the layers)."""
    return (
        len(layers) > 0
        and all(type(layer) in LEAN_LAYERS for layer in layers)
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and getattr(config, "attn_logit_softcapping", None) is None
        and on_one_device(layers)
    )


def on_one_device(modules) -> bool:
    """True when all parameters and buffers of `modules` share one real (non-meta) device and no module
    below them carries an accelerate hook (`_hf_hook`: device alignment or weight offloading)."""
    devices: set[torch.device] = set()
    for root in modules:
        for module in root.modules():
            if hasattr(module, "_hf_hook"):
                return False
            devices.update(t.device for t in module.parameters(recurse=False))
            devices.update(t.device for t in module.buffers(recurse=False))
    return len(devices) <= 1 and all(d.type != "meta" for d in devices)


# ---------------------------------------------------------------- packed linears

PACK_MAX_ROWS = 64  # larger calls (training, data generation, long prefills) keep F.linear
GEMV_MAX_ROWS = 3  # 1-3 rows keep F.linear: MKL's few-row path reads each weight once already
MKL_BUCKETS = (4, 8, 16, 32, 64)  # MKL packs a weight for one row count: rows are padded up to a bucket
PACK_HINT = 16  # oneDNN weight layout tuned for this many rows (the fallback without MKL packing)


def mkl_packing_available() -> bool:
    ops = getattr(torch.ops, "mkl", None)
    return bool(torch.backends.mkl.is_available() and ops is not None
                and hasattr(ops, "_mkl_reorder_linear_weight") and hasattr(ops, "_mkl_linear"))


def packing_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    onednn = bool(torch.backends.mkldnn.is_available() and ops is not None
                  and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))
    return onednn or mkl_packing_available()


def bucket_rows(rows: int) -> int:
    """The packing bucket of a call on `rows` rows: with MKL packing, the next of MKL_BUCKETS up (rows are
    padded to it); 0 for the one shared oneDNN reorder (hosts without MKL packing); -1: F.linear."""
    return _BUCKET[rows] if 0 < rows <= PACK_MAX_ROWS else -1


def _agrees(got: torch.Tensor, want: torch.Tensor) -> bool:
    return torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()) + 1e-6)


def _pack(module: nn.Linear, bucket: int) -> tuple | None:
    """(kind, packed weight) for one bucket: MKL's packed GEMM for `bucket` rows (the same MKL kernels as
    F.linear without re-packing the weight each call), or for bucket 0 a oneDNN reorder; None when it
    does not reproduce F.linear on a probe."""
    w = module.weight.detach()
    probe = torch.randn(bucket or 3, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.dtype)
    want = F.linear(probe, w)
    try:
        if bucket:
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w, bucket)
            ok = _agrees(torch.ops.mkl._mkl_linear(probe, packed, w, None, bucket), want)
            return ("mkl", packed) if ok else None
        packed = torch.ops.mkldnn._reorder_linear_weight(w, PACK_HINT)
        ok = _agrees(torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], ""), want)
        return ("onednn", packed) if ok else None
    except RuntimeError:
        return None


# packed weights live beside the modules, never in them: an unpacked module is exactly HF's again
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # nn.Linear -> (weight key, {bucket: pack})

assert MKL_BUCKETS[-1] == PACK_MAX_ROWS
_MKL = mkl_packing_available()
# per row count: -1 = F.linear (with MKL, 1-3 rows: its few-row path reads each weight once already)
_BUCKET = [-1] * (GEMV_MAX_ROWS + 1 if _MKL else 1) + [
    next(b for b in MKL_BUCKETS if b >= r) if _MKL else 0 for r in range(GEMV_MAX_ROWS + 1 if _MKL else 1, PACK_MAX_ROWS + 1)]


def release_packed() -> int:
    """Drop every cached packed copy (they are rebuilt on the next packed call); returns how many modules had one."""
    n = len(_PACKED)
    _PACKED.clear()
    return n


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear.forward for inference on few rows: MKL's GEMM on a weight packed once per row bucket
    (4-64 rows), or oneDNN on one reordered copy (1-64 rows) where torch has no MKL packing; repacked
    when the weight changed in place or moved. F.linear for other row counts, under autograd, or off
    the CPU / float32. (Per call, so kept lean.)"""
    w = self.weight
    rows = x.numel() // x.shape[-1]
    if (rows > PACK_MAX_ROWS or _BUCKET[rows] < 0 or torch.is_grad_enabled() or x.dtype != torch.float32
            or w.dtype != torch.float32 or x.device.type != "cpu"):
        return F.linear(x, w, self.bias)
    bucket, key = _BUCKET[rows], (w._version, w.data_ptr())
    state = _PACKED.get(self)
    if state is None or state[0] != key:
        state = _PACKED[self] = (key, {})
    packs: dict[int, tuple | None] = state[1]
    pack = packs[bucket] if bucket in packs else packs.setdefault(bucket, _pack(self, bucket))
    if pack is None:
        return F.linear(x, w, self.bias)
    if pack[0] == "onednn":
        return torch.ops.mkldnn._linear_pointwise(x, pack[1], self.bias, "none", [], "")
    flat = x.reshape(rows, x.shape[-1])
    if rows < bucket:
        flat = F.pad(flat, (0, 0, 0, bucket - rows))
    out = torch.ops.mkl._mkl_linear(flat, pack[1], w, self.bias, bucket)
    return (out if rows == bucket else out[:rows]).view(*x.shape[:-1], out.shape[-1])


def is_packed(module: nn.Module) -> bool:
    """True while `module.forward` is routed through `_packed_forward` (an instance-level override)."""
    fwd = module.__dict__.get("forward")
    return getattr(fwd, "__func__", None) is _packed_forward


def pack_linears(root: nn.Module) -> list[nn.Linear]:
    """Route small inference calls of every nn.Linear under `root` through `_packed_forward` (CPU, fp32).

    An instance-level `forward` is set on each; `unpack_linears` removes it again. Weights are packed
    on first use and the packed copies are kept beside the module (memory grows by one copy of the
    linear weights per MKL row bucket used; `release_packed` drops them) so that packing again later
    costs nothing. Calls that need gradients, many rows, another device or dtype run F.linear
    unchanged. Returns the layers routed by this call (none when neither MKL nor oneDNN packing is
    available, or when they are routed already).
    """
    if not packing_available():
        return []
    routed = []
    for module in root.modules():
        if type(module) is nn.Linear and "forward" not in module.__dict__:
            module.forward = types.MethodType(_packed_forward, module)
            routed.append(module)
    return routed


def unpack_linears(modules: nn.Module | list[nn.Module]) -> int:
    """Remove the packed routing from `modules` (a list, or every module under a root): plain nn.Linear
    again. Other instance-level overrides are left alone. Returns the number of modules restored."""
    found = list(modules.modules()) if isinstance(modules, nn.Module) else list(modules)
    n = 0
    for module in found:
        if is_packed(module):
            del module.__dict__["forward"]
            n += 1
    return n


@contextlib.contextmanager
def packed_linears(*roots: nn.Module | None):
    """Packed linears under `roots` for the duration of the block; nested use is harmless (the outermost
    block restores what it routed, an inner one routes nothing new)."""
    routed: list[nn.Linear] = []
    try:
        for root in roots:
            if root is not None:
                routed += pack_linears(root)
        yield routed
    finally:
        unpack_linears(routed)


# ---------------------------------------------------------------- masks


def attend_mask(positions: torch.Tensor, past_len: int, tree_mask: torch.Tensor | None,
                window: int | None, past_mask: torch.Tensor | None = None,
                past_positions: torch.Tensor | None = None) -> torch.Tensor | None:
    """Boolean mask [1, 1, S, past+S] (True = attend) for S new tokens at `positions` [S].

    Cached keys sit at `past_positions` [past] (default 0..past-1) and are all seen unless `past_mask`
    [S, past] says which each new token sees; `tree_mask` [S, S] (ancestor-or-self) defaults to
    causal; `window` (sliding layers) blocks keys with query_pos - key_pos >= window, as HF does.
    None when no mask tensor is needed: one new token with nothing outside the window, or a plain
    prefill (empty cache, causal, no query `window` or more past its first key), which runs with is_causal.
    """
    s, device = positions.shape[0], positions.device
    plain = tree_mask is None and past_mask is None and past_positions is None
    if plain and s == 1 and (window is None or past_len < window):
        return None
    if plain and past_len == 0 and (window is None or s <= window):
        return None
    allowed = torch.ones(s, past_len + s, dtype=torch.bool, device=device)
    if past_mask is not None:
        allowed[:, :past_len] = past_mask
    if tree_mask is None:
        allowed[:, past_len:].tril_()
    else:
        allowed[:, past_len:] = tree_mask
    if window is not None and (past_len + s > window or past_positions is not None):
        past_pos = torch.arange(past_len, device=device) if past_positions is None else past_positions
        key_pos = torch.cat([past_pos, positions])
        allowed &= (positions[:, None] - key_pos[None, :]) < window
    return allowed[None, None]


# ---------------------------------------------------------------- SDPA calls


class SdpaPlan(NamedTuple):
    """How one attention call goes to `F.scaled_dot_product_attention`."""

    is_causal: bool  # is_causal=True, no mask tensor (plain prefill)
    mask: bool  # an explicit attn_mask (tree verification, sliding window, decode past a window)
    enable_gqa: bool  # SDPA groups query heads over the K/V heads itself (no copy)
    repeat_kv: bool  # K/V expanded per query head before the call, as HF's repeat_kv does
    kernel: str  # the kernel the call is shaped for: "flash", "efficient" (CUDA); "cpu" (CPU flash)


@functools.lru_cache(maxsize=256)
def sdpa_plan(device_type: str, has_mask: bool, gqa: bool, causal: bool = False,
              dtype: torch.dtype = torch.bfloat16, head_dim: int = 128) -> SdpaPlan:
    """The SDPA call for one attention: pure, cached, and what `layer_forward` does.

    `has_mask`: the call needs an explicit mask; `causal`: no mask but a multi-token causal query over
    only its own keys (a plain prefill); `gqa`: fewer K/V heads than query heads.
    On CUDA, SDPA takes `enable_gqa` only in its flash kernel (fp16/bf16, head_dim <= 256, no mask);
    a masked, float32 or wide-head call with `enable_gqa` lands in the math kernel, which materialises
    [heads, S, S] scores (16-24 GiB at 8k tokens in an 8B model). Those calls expand K/V per head
    first so the memory-efficient kernel can take them. Elsewhere (CPU) `enable_gqa` is kept: the
    CPU flash kernel takes masks and grouped heads, and copying K/V would only cost time.
    """
    is_causal = causal and not has_mask
    if device_type != "cuda":
        return SdpaPlan(is_causal, has_mask, gqa, False, "cpu" if device_type == "cpu" else device_type)
    flash = not has_mask and dtype in (torch.float16, torch.bfloat16) and head_dim <= 256
    return SdpaPlan(is_causal, has_mask, gqa and flash, gqa and not flash, "flash" if flash else "efficient")


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, S, D] -> [B, H_kv * n_rep, S, D]; head j*n_rep + r reads K/V head j (HF's repeat_kv)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
              causal: bool) -> torch.Tensor:
    """SDPA over q [B, H, S, D] and k, v [B, H_kv, K, D] as `sdpa_plan` says; `causal` as sdpa_plan's."""
    gqa = q.shape[1] != k.shape[1]
    plan = sdpa_plan(q.device.type, mask is not None, gqa, causal, q.dtype, q.shape[-1])
    if plan.repeat_kv:
        n_rep = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, is_causal=plan.is_causal,
                                          enable_gqa=plan.enable_gqa)


def sdpa_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                 causal: bool = False) -> str:
    """The SDPA backend torch would pick for this call as planned ("FLASH_ATTENTION", "EFFICIENT_ATTENTION",
    "MATH", ...), from torch's own dispatcher (`torch._fused_sdp_choice`, private: "unknown" when absent)."""
    gqa = q.shape[1] != k.shape[1]
    plan = sdpa_plan(q.device.type, mask is not None, gqa, causal, q.dtype, q.shape[-1])
    if plan.repeat_kv:
        k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    choice = getattr(torch, "_fused_sdp_choice", None)
    if choice is None:
        return "unknown"
    try:
        index = int(choice(q, k, v, mask, 0.0, plan.is_causal, scale=None, enable_gqa=plan.enable_gqa))
    except (RuntimeError, TypeError):
        return "unknown"
    from torch.nn.attention import SDPBackend

    names = {int(getattr(SDPBackend, n)): n for n in dir(SDPBackend) if n.isupper()}
    return names.get(index, "unknown")


# ---------------------------------------------------------------- layers


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's apply_rotary_pos_emb for one tensor: x * cos + rotate_half(x) * sin (same operations)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos) + (rotated * sin)


def layer_forward(layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                  cache: KVCache | None, index: int) -> torch.Tensor:
    """One Llama/Qwen3/Gemma3 decoder layer on h [1, S, H]; cos/sin [1, S, D]; appends K/V to `cache`.

    Without a cache the layer attends causally over its own S tokens (mask None) or as `mask` says;
    with one, mask None means every key (one new token) or causal over an empty cache (a prefill).
    """
    attn = layer.self_attn
    b, s, _ = h.shape
    x = layer.input_layernorm(h)
    shape = (b, s, -1, attn.head_dim)
    q = attn.q_proj(x).view(shape)
    k = attn.k_proj(x).view(shape)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    if hasattr(attn, "q_norm"):  # Qwen3, Gemma3: RMSNorm over head_dim
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q = _rope(q.transpose(1, 2), cos, sin)
    k = _rope(k.transpose(1, 2), cos, sin)
    if cache is not None:
        k, v = cache.write(index, k, v)
    out = attention(q, k, v, mask, attn.scaling, causal=mask is None and s > 1 and k.shape[2] == s)
    out = attn.o_proj(out.transpose(1, 2).reshape(b, s, -1))
    if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma3: sandwich norms
        h = h + layer.post_attention_layernorm(out)
        return h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
    h = h + out
    return h + layer.mlp(layer.post_attention_layernorm(h))
