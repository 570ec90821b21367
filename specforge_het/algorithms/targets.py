"""Lean training targets and a fused, chunked LM-head loss.

Memory: the base distribution is never held as a [B, T, V] float32 tensor. `base_targets` applies
the base LM head only at the positions that carry a loss, in chunks of rows, restricts it to the
draft vocabulary *before* the softmax, and keeps one [M, Vd] tensor (M = loss positions) that every
unroll step indexes (no shifted copies). The base's top-1 over its *full* vocabulary is found in
the same chunks (the draft-vocabulary columns against the rest), so positions whose base top-1
the draft cannot propose are known and count as misses.

`head_loss` is the draft side: logits = x @ W.T over the draft vocabulary, the loss against the
stored targets and its gradients, computed chunk by chunk in the forward (the [N, Vd] logits are
never stored; backward only scales the saved gradients), as fused linear-cross-entropy kernels do.
Losses: "ce" (soft cross-entropy), "tv" (total variation 0.5·Σ|q - p|, an acceptance-targeting
loss: the acceptance probability of a sampled draft token is 1 - TV), "ce+tv", or "ce+top1" (soft
cross-entropy plus -log q at the base's top-1: greedy acceptance is top-1 agreement, and a small draft
spends capacity matching the base's tail under soft targets alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_KINDS = ("ce", "tv", "ce+tv", "ce+top1")


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for t's device, else t's own dtype."""
    dev = t.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return t.dtype


@dataclass
class Targets:
    """The base distribution over the draft vocabulary at the M positions that carry a loss."""

    probs: torch.Tensor  # [M, Vd] (compute dtype) softmax over the draft-vocabulary columns of the base head
    top1: torch.Tensor  # [M] long: base top-1 over the full base vocabulary as a draft row, -1 = not proposable
    index: torch.Tensor  # [B, S] long: row of `probs` for each position, -1 where there is no target


def _softcap(z: torch.Tensor, cap: float | None) -> torch.Tensor:
    return torch.tanh(z / cap) * cap if cap else z


@torch.no_grad()
def base_targets(last: torch.Tensor, weight: torch.Tensor, where: torch.Tensor, d2t: torch.Tensor | None,
                 softcap: float | None = None, chunk: int = 1024) -> Targets:
    """Targets from final-normed base states `last` [B, S, Hb] at positions `where` [B, S] (bool).

    weight: the base LM head [Vb, Hb]; d2t: draft row -> base id ([Vd]) or None (draft vocab = base vocab).
    """
    index = torch.full(where.shape, -1, dtype=torch.long, device=where.device)
    m = int(where.sum())
    index[where] = torch.arange(m, device=where.device)
    cdt = compute_dtype(last)
    rows = last[where]
    with torch.autocast(last.device.type, enabled=False):
        w = weight.detach().to(cdt)
        if d2t is None:
            wd, wr = w, None
        else:
            keep = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
            keep[d2t] = False
            wd, wr = w[d2t], (w[keep] if bool(keep.any()) else None)
        probs = torch.empty(m, wd.shape[0], dtype=cdt, device=last.device)
        top1 = torch.empty(m, dtype=torch.long, device=last.device)
        for a in range(0, m, chunk):
            x = rows[a:a + chunk].to(cdt)
            zd = _softcap((x @ wd.T).float(), softcap)
            best, arg = zd.max(-1)
            if wr is not None:
                rest = _softcap((x @ wr.T).float(), softcap).amax(-1)
                arg = torch.where(best >= rest, arg, torch.full_like(arg, -1))
            top1[a:a + chunk] = arg
            probs[a:a + chunk] = torch.softmax(zd, -1).to(cdt)
    return Targets(probs, top1, index)


def _add_top1(per: torch.Tensor, g: torch.Tensor, logq: torch.Tensor, q: torch.Tensor,
              want: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Add -log q[want] and its logit gradient q - onehot(want) to rows whose base top-1 the draft has (want >= 0)."""
    has = want >= 0
    col = want.clamp_min(0)[:, None]
    per = per - torch.where(has, logq.gather(1, col)[:, 0], 0.0)
    onehot = torch.zeros_like(q).scatter_(1, col, 1.0)
    return per, g + has[:, None] * (q - onehot)


class _HeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, probs, tidx, row_w, want, kind, softcap, chunk, k):
        n, cdt = x.shape[0], compute_dtype(x)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        per_row = torch.zeros(n, dtype=torch.float32, device=x.device)
        hit1 = torch.zeros(n, dtype=torch.bool, device=x.device)
        hitk = torch.zeros(n, dtype=torch.bool, device=x.device)
        gx = torch.empty(x.shape, dtype=torch.float32, device=x.device) if need_x else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if need_w else None
        with torch.autocast(x.device.type, enabled=False):
            w = weight.detach().to(cdt)
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                xc = x[a:b].detach().to(cdt)
                raw = (xc @ w.T).float()
                z = _softcap(raw, softcap)
                logq = torch.log_softmax(z, -1)
                q = logq.exp()
                p = probs[tidx[a:b]].float()
                per = torch.zeros(b - a, device=x.device)
                g = torch.zeros_like(q)
                if "ce" in kind:
                    per += -(p * logq).sum(-1)
                    g += q * p.sum(-1, keepdim=True) - p
                if "tv" in kind:
                    diff = q - p
                    per += 0.5 * diff.abs().sum(-1)
                    s = torch.sign(diff)
                    g += 0.5 * q * (s - (s * q).sum(-1, keepdim=True))
                if "top1" in kind:
                    per, g = _add_top1(per, g, logq, q, want[a:b])
                per_row[a:b] = per
                top = z.topk(min(k, z.shape[-1]), -1).indices
                hit1[a:b] = top[:, 0] == want[a:b]
                hitk[a:b] = (top == want[a:b, None]).any(-1)
                g = g * row_w[a:b, None].float()
                if softcap:
                    g = g * (1 - (z / softcap) ** 2)
                gc = g.to(cdt)
                if need_x:
                    gx[a:b] = (gc @ w).float()
                if need_w:
                    gw += (gc.T @ xc).float()
        ctx.save_for_backward(gx, gw)
        ctx.dtypes = (x.dtype, weight.dtype)
        loss = (per_row * row_w.float()).sum()
        ctx.mark_non_differentiable(per_row, hit1, hitk)
        return loss, per_row, hit1, hitk

    @staticmethod
    def backward(ctx, grad_loss, _g_rows, _g1, _gk):
        gx, gw = ctx.saved_tensors
        dx = None if gx is None else (gx * grad_loss).to(ctx.dtypes[0])
        dw = None if gw is None else (gw * grad_loss).to(ctx.dtypes[1])
        return dx, dw, None, None, None, None, None, None, None, None


def head_loss(x: torch.Tensor, weight: torch.Tensor, probs: torch.Tensor, tidx: torch.Tensor, row_w: torch.Tensor,
              want: torch.Tensor, kind: str = "ce", softcap: float | None = None, chunk: int = 1024, k: int = 4):
    """Σ_r row_w[r] · loss(softmax(x_r @ W.T), probs[tidx[r]]) without storing the [N, V] logits.

    x [N, H] (draft side, differentiable), weight [V, H] (differentiable or frozen), probs [M, V] targets,
    tidx [N] rows of probs, row_w [N] loss weights (0 = counted for accuracy only), want [N] the base top-1
    as a row of W (-1 = a miss). Returns (loss, per-row loss [N], top-1 hit [N], top-k hit [N]).
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss '{kind}'; use one of {LOSS_KINDS}")
    return _HeadLoss.apply(x, weight, probs, tidx, row_w, want, kind, softcap, chunk, k)
