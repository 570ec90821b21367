"""Pure summary functions: speed-up against the baseline, τ, identical-output counts, peak memory."""

from __future__ import annotations

import math
import statistics

from specforge_het.bench.methods import BASELINE


def speedups(baseline_tps: dict, method_tps: dict) -> list[float]:
    """Per-prompt speed-up = method tokens/s / baseline tokens/s, for prompts both ran (keys in common)."""
    out = []
    for key, tps in method_tps.items():
        ref = baseline_tps.get(key)
        if ref and ref > 0 and tps == tps:  # skip missing, zero and NaN
            out.append(tps / ref)
    return out


def overall_tps(new_tokens: list[int], seconds: list[float]) -> float:
    """Tokens/s over a whole run: all new tokens / all wall time."""
    total = sum(seconds)
    return sum(new_tokens) / total if total > 0 else float("nan")


def median_or_nan(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _round(x: float | None, n: int = 3) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, n)


def summarise(records, order: list[str], baseline: str = BASELINE) -> dict[str, dict]:
    """{method: figures} for every method in `order` that has records.

    speedup_median: median over prompts of the per-prompt tokens/s ratio to the baseline;
    speedup_overall: the method's overall tokens/s / the baseline's; tau: committed / decode steps.
    """
    by_method: dict[str, list] = {}
    for r in records:
        by_method.setdefault(r.method, []).append(r)
    base_recs = by_method.get(baseline, [])
    base_tps = {(r.conversation, r.turn): r.tokens_per_s for r in base_recs}
    base_overall = overall_tps([r.new_tokens for r in base_recs], [r.seconds for r in base_recs])
    out: dict[str, dict] = {}
    for name in order:
        recs = by_method.get(name)
        if not recs:
            continue
        tps = overall_tps([r.new_tokens for r in recs], [r.seconds for r in recs])
        ratios = speedups(base_tps, {(r.conversation, r.turn): r.tokens_per_s for r in recs})
        steps = sum(r.steps for r in recs)
        compared = [r.identical for r in recs if r.identical is not None]
        peaks = [r.peak_mb for r in recs if r.peak_mb is not None]
        out[name] = {
            "prompts": len(recs),
            "new_tokens": sum(r.new_tokens for r in recs),
            "seconds": _round(sum(r.seconds for r in recs), 4),
            "tokens_per_s": _round(tps),
            "speedup_median": _round(median_or_nan(ratios)),
            "speedup_overall": _round(tps / base_overall if base_overall and base_overall == base_overall else None),
            "tau": _round(sum(r.committed for r in recs) / steps if steps else None),
            "base_forwards": sum(r.forwards for r in recs),
            "identical": sum(compared) if name != baseline else None,
            "compared": len(compared) if name != baseline else None,
            "near_tie": sum(r.divergence is not None and r.divergence.near_tie for r in recs) if name != baseline else None,
            "mismatch": sum(r.divergence is not None and not r.divergence.near_tie for r in recs)
            if name != baseline else None,
            "peak_mb": _round(max(peaks), 1) if peaks else None,
        }
    return out


def mismatches(records, method: str) -> list[tuple[str, int]]:
    """(conversation, turn) of every prompt where `method`'s output differs from the baseline's."""
    return [(r.conversation, r.turn) for r in records if r.method == method and r.identical is False]


def divergences(records, method: str) -> list[tuple[str, int, object]]:
    """(conversation, turn, divergence) of `method`'s differing prompts whose first difference was
    classified (inference/divergence.py)."""
    return [(r.conversation, r.turn, r.divergence) for r in records if r.method == method and r.divergence is not None]
