"""Why two greedy outputs differ: a near-tie flip of low-precision rounding, or a real mismatch.

Speculative decoding verifies N tree rows in one forward; base-only decoding runs one row per
step. Mathematically the logits are the same; in bfloat16 the two computations round
differently, so where the base's two best tokens are nearly tied the argmax can flip, and the
rest of the text follows another path. That is not a bug (float32 runs are identical, and the
tests assert it there). A difference is classified at its first position from the base's logits
there (one forward over prompt + the common prefix, in the run's dtype):

* near-tie flip: both tokens are within the tolerance of the base's best logit (so the base's
  top-2 margin is below it too): rounding alone can order them either way;
* real mismatch: anything else, e.g. the other output's token is far below the base's best.

Tolerance = REL_TOLERANCE[dtype] x max(1, |best logit|): logits round relative to their size.
Measured on SmolLM2-135M (CPU, 3 prompts x 48 tokens, N rows at once vs one row per step), the
top-2 margin moved by at most 0.0125 x |best logit| in bfloat16 (0.375 at |z| ~ 30) and 1e-6 x
|best logit| in float32; the tolerances leave ~2.5x (bfloat16; float16 the same rule, 3 more
mantissa bits) and ~15x (float32) headroom for deeper models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

REL_TOLERANCE = {"bfloat16": 2.0**-5, "float16": 2.0**-8, "float32": 2.0**-16, "float64": 2.0**-16}
NEAR_TIE, MISMATCH = "near-tie flip", "real mismatch"


def dtype_name(dtype: torch.dtype | str) -> str:
    return str(dtype).replace("torch.", "")


def tolerance(dtype: torch.dtype | str, best_logit: float) -> float:
    """Largest logit gap that rounding in `dtype` can close: REL_TOLERANCE[dtype] x max(1, |best logit|)."""
    name = dtype_name(dtype)
    if name not in REL_TOLERANCE:
        raise ValueError(f"no near-tie tolerance for dtype {name}; known: {', '.join(REL_TOLERANCE)}")
    return REL_TOLERANCE[name] * max(1.0, abs(best_logit))


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where the token lists differ (a length difference counts); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@dataclass(frozen=True)
class Divergence:
    position: int  # index among the new tokens of the first difference
    base_token: int | None  # the base-only (reference) output's token there (None: it ended)
    other_token: int | None  # the compared output's token there (None: it ended)
    margin: float  # the base's top-1 minus top-2 logit there
    gap: float  # the base's best logit minus the lower of the two tokens' logits (inf if one ended)
    tolerance: float
    dtype: str
    verdict: str  # NEAR_TIE | MISMATCH

    @property
    def near_tie(self) -> bool:
        return self.verdict == NEAR_TIE

    def describe(self) -> str:
        tokens = f"base {self.base_token} vs {self.other_token}"
        return (f"first difference at new token {self.position} ({tokens}): base top-2 margin {self.margin:.4g}, "
                f"gap {self.gap:.4g}, {self.dtype} tolerance {self.tolerance:.3g} -> {self.verdict}")

    def to_json(self) -> dict:
        out = asdict(self)
        out["gap"] = None if self.gap == float("inf") else self.gap
        return out


def classify_divergence(base_tokens: Sequence[int], other_tokens: Sequence[int], logits: torch.Tensor,
                        dtype: torch.dtype | str) -> Divergence | None:
    """Classify the first difference of two greedy outputs (pure). `logits` [V]: the base's logits at
    the first differing position (after prompt + common prefix). None when the outputs are equal."""
    pos = first_difference(base_tokens, other_tokens)
    if pos is None:
        return None
    if logits.dim() != 1:
        raise ValueError(f"logits must be the base's [V] row at the divergence, got shape {tuple(logits.shape)}")
    z = logits.float()
    top = torch.topk(z, min(2, z.shape[0])).values.tolist()
    best, margin = top[0], (top[0] - top[1] if len(top) > 1 else float("inf"))
    a = base_tokens[pos] if pos < len(base_tokens) else None
    b = other_tokens[pos] if pos < len(other_tokens) else None
    gap = float("inf") if a is None or b is None else best - min(float(z[a]), float(z[b]))
    tol = tolerance(dtype, best)
    verdict = NEAR_TIE if gap <= tol else MISMATCH
    return Divergence(pos, a, b, margin, gap, tol, dtype_name(dtype), verdict)


@torch.no_grad()
def explain_divergence(base, prompt_ids: Sequence[int], base_tokens: Sequence[int],
                       other_tokens: Sequence[int]) -> Divergence | None:
    """The base's logits where two outputs of the same prompt first differ, classified. One base forward
    (no cache) over prompt + common prefix, in the base's dtype; nothing when the outputs are equal."""
    pos = first_difference(base_tokens, other_tokens)
    if pos is None:
        return None
    ids = torch.tensor([list(prompt_ids) + list(base_tokens[:pos])], device=base.device)
    logits = base.features(ids, ()).logits[0, -1]
    return classify_divergence(base_tokens, other_tokens, logits, base.dtype)


def verdict_counts(divergences: Sequence[Divergence | None]) -> dict[str, int]:
    """{'near_tie': n, 'mismatch': m} over the divergences given (None entries skipped)."""
    found = [d for d in divergences if d is not None]
    return {"near_tie": sum(d.near_tie for d in found), "mismatch": sum(not d.near_tie for d in found)}
