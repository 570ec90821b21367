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
* on CUDA every call runs under `cuda_sdpa_kernels`: flash, memory-efficient or (last) math, never
  cuDNN, which builds its graph again for every new key length, i.e. every decode step.

The decoder's other CPU fast paths, few-row linears with a kernel measured per shape
(models/linears.py, `packed_linears`) and q/k/v and gate/up each as one linear (models/fused.py,
`fused_projections`: `layer_forward` asks it which to call), are entered only by the decoder's caller
(`--inference.fast_paths auto`, inference/fast_paths.py); nothing changes a model on construction.

Supported layers: Llama, Qwen3 and Gemma3 (sliding windows included) with SDPA attention, all on
one device without accelerate hooks; anything else (a base sharded with a device map included) runs
through HF (`supports_lean` says which).
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.models.gemma3 import modeling_gemma3 as g3
from transformers.models.llama import modeling_llama as ll
from transformers.models.qwen3 import modeling_qwen3 as q3

from specforge_het.models import fused
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


RESTRICTED_SDPA_DEVICES = frozenset({"cuda"})  # tests add "cpu" to check that every call runs under the restriction
_UNRESTRICTED = contextlib.nullcontext()  # reusable: the CPU decoder's per-call cost is one set lookup
_NOT_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def cuda_sdpa_kernels(device_type: str):
    """The SDPA kernels a call may use here: on CUDA flash, memory-efficient or (last) math, not cuDNN.

    torch 2.11 picks cuDNN attention first on Hopper; it builds an execution graph per new shape, and
    decoding changes the key length every step. Measured on an H200 (doctor, random 8B shape, bf16,
    8k context): 101 ms per base-only step with cuDNN chosen, 27 ms without. Enter it around the SDPA call
    itself, not around a whole forward: gradient checkpointing recomputes a layer in backward, outside
    any context of the forward, and a kernel other than the forward's saves other tensors (torch raises).
    Elsewhere: no restriction (a no-op)."""
    if device_type not in RESTRICTED_SDPA_DEVICES:
        return _UNRESTRICTED
    return sdpa_kernel(_NOT_CUDNN)


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
    plan_of = sdpa_plan.__wrapped__ if torch.compiler.is_compiling() else sdpa_plan  # traced: the pure function
    plan = plan_of(q.device.type, mask is not None, gqa, causal, q.dtype, q.shape[-1])
    if plan.repeat_kv:
        n_rep = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    with cuda_sdpa_kernels(q.device.type):
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
        with cuda_sdpa_kernels(q.device.type):
            index = int(choice(q, k, v, mask, 0.0, plan.is_causal, scale=None, enable_gqa=plan.enable_gqa))
    except (RuntimeError, TypeError):
        return "unknown"

    names = {int(getattr(SDPBackend, n)): n for n in dir(SDPBackend) if n.isupper()}
    return names.get(index, "unknown")


# ---------------------------------------------------------------- layers


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's apply_rotary_pos_emb for one tensor: x * cos + rotate_half(x) * sin (same operations)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos) + (rotated * sin)


def layer_forward(layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                  cache: KVCache | None, index: int, proj=None, normed: torch.Tensor | None = None) -> torch.Tensor:
    """One Llama/Qwen3/Gemma3 decoder layer on h [1, S, H]; cos/sin [1, S, D]; appends K/V to `cache`.

    Without a cache the layer attends causally over its own S tokens (mask None) or as `mask` says;
    with one, mask None means every key (one new token) or causal over an empty cache (a prefill).
    `proj`: the layer's projections from elsewhere (`qkv(x)`, `o(x)`, `mlp(x)`; models/compiled.py),
    instead of its own modules (or their fused copies, models/fused.py); `normed`: the attention's input,
    when the caller computed it (a fused first layer's norms over embeddings and h), else input_layernorm(h).
    """
    attn = layer.self_attn
    b, s, _ = h.shape
    x = layer.input_layernorm(h) if normed is None else normed
    shape = (b, s, -1, attn.head_dim)
    # q_proj, k_proj, v_proj: one call inside the decoder's fast paths
    q, k, v = fused.qkv(attn, x) if proj is None else proj.qkv(x)
    q, k, v = q.view(shape), k.view(shape), v.view(shape).transpose(1, 2)
    if hasattr(attn, "q_norm"):  # Qwen3, Gemma3: RMSNorm over head_dim
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q = _rope(q.transpose(1, 2), cos, sin)
    k = _rope(k.transpose(1, 2), cos, sin)
    if cache is not None:
        k, v = cache.write(index, k, v)
    out = attention(q, k, v, mask, attn.scaling, causal=mask is None and s > 1 and k.shape[2] == s)
    out = out.transpose(1, 2).reshape(b, s, -1)
    out = attn.o_proj(out) if proj is None else proj.o(out)
    mlp = functools.partial(fused.mlp, layer.mlp) if proj is None else proj.mlp
    if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma3: sandwich norms
        h = h + layer.post_attention_layernorm(out)
        return h + layer.post_feedforward_layernorm(mlp(layer.pre_feedforward_layernorm(h)))
    h = h + out
    return h + mlp(layer.post_attention_layernorm(h))
