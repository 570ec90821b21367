"""The bench's summary: the evaluation harness's (inference/harness.py) against the baseline, and the
differing prompts per method for the report."""

from __future__ import annotations

from collections.abc import Sequence

from specforge_het.bench.methods import BASELINE
from specforge_het.inference import harness
from specforge_het.inference.harness import Record


def summarise(records: Sequence[Record], order: list[str], baseline: str = BASELINE) -> dict[str, dict]:
    """{method: figures} for every method in `order` that has records (harness.summarise against `baseline`)."""
    return harness.summarise(records, baseline, order)


def mismatches(records, method: str) -> list[tuple[str, int]]:
    """(conversation, turn) of every prompt where `method`'s output differs from the baseline's."""
    return [(r.conversation, r.turn) for r in records if r.method == method and r.identical is False]


def divergences(records, method: str) -> list[tuple[str, int, object]]:
    """(conversation, turn, divergence) of `method`'s differing prompts whose first difference was
    classified (inference/divergence.py)."""
    return [(r.conversation, r.turn, r.divergence) for r in records if r.method == method and r.divergence is not None]
