"""Training-time-test (TTT) attention that does only the needed work.

At unroll step j a query at position i attends to the real prefix (step-0 keys at positions <= i)
and to its own earlier draft steps (the step-1..j keys at the same position i): a causal
attention plus j diagonal terms. The old formulation (`common.ttt_mask`) attended over all
(j+1)·s keys with an additive [B, 1, s, (j+1)·s] mask; this one computes

  * the causal prefix attention with its log-sum-exp (`prefix_attention`, exact, differentiable in
    both outputs, computed in query chunks so no [s, s] score matrix of a whole head is held),
  * the j diagonal scores as elementwise dot products,

and merges them with a log-sum-exp combine (as EAGLE-3/SpecForge's split attention does).
Padding is right padding: a real query never sees a padded key under the causal rule, so the
padding mask only changes padded positions, which carry no loss and never feed a real one.

`ttt_layer` runs one Llama/Qwen3/Gemma3 decoder layer this way, with the layer's own norms,
projections, q/k norms, rotary and MLP in HF's order (EAGLE-3's fused layer-0 input included).
"""

from __future__ import annotations

import torch

from specforge_het.models.lean import cuda_sdpa_kernels
from specforge_het.models.parts import layer_input

QUERY_CHUNK = 256


_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


class _PrefixAttention(torch.autograd.Function):
    """Causal softmax attention returning (out, lse), both differentiable; float32 (or float64) math.

    On a CPU: PyTorch's fused flash-attention kernels. Their backward takes only the output's gradient;
    the log-sum-exp's gradient g enters through D = rowsum(dO * out) (dS = P * (dP - D + g)), so the
    kernel is handed out - (g / |dO|^2) dO, whose D is D - g. Elsewhere: the same math, chunked over queries.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale, chunk):
        acc = torch.promote_types(q.dtype, torch.float32)
        group = q.shape[1] // k.shape[1]
        ctx.flash = q.device.type == "cpu" and _FLASH is not None and _FLASH_BWD is not None
        ctx.scale, ctx.chunk, ctx.group, ctx.dtypes = scale, chunk, group, (q.dtype, k.dtype, v.dtype)
        if ctx.flash:
            qf = q.detach().to(acc)
            kf = k.detach().to(acc).repeat_interleave(group, 1)
            vf = v.detach().to(acc).repeat_interleave(group, 1)
            out, lse = _FLASH(qf, kf, vf, 0.0, True, scale=scale)
            ctx.save_for_backward(qf, kf, vf, out, lse)
            return out.to(q.dtype), lse
        out, lse = _math_forward(q.detach().to(acc), k.detach().to(acc), v.detach().to(acc), scale, chunk)
        ctx.save_for_backward(q, k, v, out, lse)
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, g_out, g_lse):
        q, k, v, out, lse = ctx.saved_tensors
        go = g_out.to(out.dtype) if g_out is not None else torch.zeros_like(out)
        gl = g_lse.to(lse.dtype) if g_lse is not None else torch.zeros_like(lse)
        if not ctx.flash:
            dq, dk, dv = _math_backward(q.to(out.dtype), k.to(out.dtype), v.to(out.dtype), out, lse, go, gl,
                                        ctx.scale, ctx.chunk)
        else:
            nrm = (go * go).sum(-1, keepdim=True)
            adj = out - torch.where(nrm > 0, gl[..., None] / nrm.clamp(min=torch.finfo(nrm.dtype).tiny), 0.0) * go
            dq, dk, dv = _FLASH_BWD(go, q, k, v, adj, lse, 0.0, True, scale=ctx.scale)
            lost = (nrm[..., 0] == 0) & (gl != 0)  # rows with no output gradient: D cannot carry g
            if bool(lost.any()):  # linearity: bwd(u, out - c u) - bwd(u, out) = the g-term alone
                u = lost[..., None].to(out.dtype).expand_as(out)
                c = (gl * lost)[..., None] / out.shape[-1]
                a = _FLASH_BWD(u, q, k, v, out - c * u, lse, 0.0, True, scale=ctx.scale)
                b = _FLASH_BWD(u, q, k, v, out, lse, 0.0, True, scale=ctx.scale)
                dq, dk, dv = dq + a[0] - b[0], dk + a[1] - b[1], dv + a[2] - b[2]
            bsz, h, s, d = dk.shape
            dk = dk.view(bsz, h // ctx.group, ctx.group, s, d).sum(2)
            dv = dv.view(bsz, h // ctx.group, ctx.group, s, d).sum(2)
        qt, kt, vt = ctx.dtypes
        return dq.to(qt), dk.to(kt), dv.to(vt), None, None


def _math_forward(q, k, v, scale, chunk):
    b, h, s, d = q.shape
    hk = k.shape[1]
    qf, kf, vf = q.view(b, hk, h // hk, s, d), k[:, :, None], v[:, :, None]
    out = torch.empty(b, hk, h // hk, s, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, hk, h // hk, s, dtype=q.dtype, device=q.device)
    for a in range(0, s, chunk):
        e = min(a + chunk, s)
        sc = (qf[..., a:e, :] @ kf[..., :e, :].transpose(-1, -2)) * scale
        sc[..., a:].masked_fill_(_upper(e - a, q.device), float("-inf"))
        m = torch.logsumexp(sc, -1)
        lse[..., a:e] = m
        out[..., a:e, :] = torch.exp(sc - m[..., None]) @ vf[..., :e, :]
    return out.view(b, h, s, d), lse.view(b, h, s)


def _math_backward(q, k, v, out, lse, go, gl, scale, chunk):
    b, h, s, d = q.shape
    hk = k.shape[1]
    shape = (b, hk, h // hk, s)
    qf, kf, vf = q.view(*shape, d), k[:, :, None], v[:, :, None]
    go, out, lse, gl = go.view(*shape, d), out.view(*shape, d), lse.view(shape), gl.view(shape)
    dq = torch.zeros_like(qf)
    dk = torch.zeros(b, hk, s, d, dtype=q.dtype, device=q.device)
    dv = torch.zeros(b, hk, s, d, dtype=q.dtype, device=q.device)
    delta = (go * out).sum(-1)
    for a in range(0, s, chunk):
        e = min(a + chunk, s)
        sc = (qf[..., a:e, :] @ kf[..., :e, :].transpose(-1, -2)) * scale
        sc[..., a:].masked_fill_(_upper(e - a, q.device), float("-inf"))
        p = torch.exp(sc - lse[..., a:e, None])
        dp = go[..., a:e, :] @ vf[..., :e, :].transpose(-1, -2)
        ds = p * (dp - delta[..., a:e, None] + gl[..., a:e, None]) * scale
        dq[..., a:e, :] = ds @ kf[..., :e, :]
        dk[..., :e, :] += (ds.transpose(-1, -2) @ qf[..., a:e, :]).sum(2)
        dv[..., :e, :] += (p.transpose(-1, -2) @ go[..., a:e, :]).sum(2)
    return dq.view(b, h, s, d), dk, dv


def _upper(n: int, device) -> torch.Tensor:
    """[n, n] True above the diagonal (keys after the query within the chunk's own block)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


def prefix_attention(q, k, v, scale: float, chunk: int = QUERY_CHUNK):
    """q [B, H, S, D], k/v [B, Hkv, S, D] -> (out [B, H, S, D], lse [B, H, S] float32); causal, GQA by head groups."""
    return _PrefixAttention.apply(q, k, v, scale, chunk)


def ttt_attention(q, kv: list[tuple[torch.Tensor, torch.Tensor]], scale: float) -> torch.Tensor:
    """Attention of step j = len(kv) - 1: causal over kv[0], plus the diagonal of kv[1..j]."""
    k0, v0 = kv[0]
    if len(kv) == 1:
        with cuda_sdpa_kernels(q.device.type):  # here too: gradient checkpointing recomputes this in backward
            return torch.nn.functional.scaled_dot_product_attention(
                q, k0, v0, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k0.shape[1])
    o0, lse0 = prefix_attention(q, k0, v0, scale)
    group = q.shape[1] // k0.shape[1]
    qf = q.float()
    diag_s, diag_v = [], []
    for kt, vt in kv[1:]:
        kt, vt = kt.repeat_interleave(group, 1), vt.repeat_interleave(group, 1)
        diag_s.append((qf * kt.float()).sum(-1) * scale)
        diag_v.append(vt.float())
    scores = torch.stack([lse0] + diag_s, 0)  # [1 + j, B, H, S]
    w = torch.softmax(scores, 0)
    out = w[0, ..., None] * o0.float()
    for t, vt in enumerate(diag_v):
        out = out + w[t + 1, ..., None] * vt
    return out.to(q.dtype)


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def ttt_layer(layer, h, emb, cos, sin, kv: list) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One decoder layer at an unroll step; kv holds this layer's keys/values of earlier steps.

    Returns (new hidden, this step's (k, v)). `emb` is the token embedding for EAGLE-3's fused layer 0.
    """
    layer = layer_input(layer, h, emb)
    attn = layer.self_attn
    b, s, _ = h.shape
    x = layer.input_layernorm(h)
    shape = (b, s, -1, attn.head_dim)
    q, k = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q, k = _rope(q.transpose(1, 2), cos, sin), _rope(k.transpose(1, 2), cos, sin)
    out = ttt_attention(q, list(kv) + [(k, v)], attn.scaling)
    out = attn.o_proj(out.transpose(1, 2).reshape(b, s, -1))
    if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma3 sandwich norms
        h = h + layer.post_attention_layernorm(out)
        return h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h))), (k, v)
    h = h + out
    return h + layer.mlp(layer.post_attention_layernorm(h)), (k, v)
