"""The evaluation harness (inference/harness.py): the summary's arithmetic on hand-made records, the record's
τ rule and JSON shape, and the decode loop (warm-up, history, timing source) on fake decode callables."""

from __future__ import annotations

import json

import pytest
import torch

from specforge_het.inference import harness
from specforge_het.inference.harness import Generation, Method, Record, overall_tps, speedups, summarise
from specforge_het.inference.prompts import Conversation


def _rec(method: str, conv: str, seconds: float, tokens: list[int] | None = None, committed: int | None = None,
         steps: int | None = None, turn: int = 0) -> Record:
    tokens = [1] * 10 if tokens is None else tokens
    n = len(tokens)
    return Record(method, conv, turn, 5, n, seconds, committed or n, steps or n, forwards=steps or n,
                  peak_mb=100.0, token_ids=tokens)


def test_speedups_per_prompt_ratio_skips_missing_and_zero():
    assert speedups({"a": 10.0, "b": 20.0, "c": 0.0}, {"a": 20.0, "b": 10.0, "c": 5.0, "d": 1.0}) == [2.0, 0.5]
    assert speedups({}, {"a": 1.0}) == []
    assert overall_tps([10, 30], [1.0, 3.0]) == 10.0


def test_summary_median_overall_tau_identical():
    """Three prompts: per-prompt speed-ups 2, 4, 0.5 (median 2); the overall ratio from all tokens / all
    seconds; τ pooled over steps; identical counted on token ids against the reference."""
    other = [2] * 10
    recs = [_rec("hf", "p1", 1.0), _rec("hf", "p2", 1.0), _rec("hf", "p3", 2.0),
            _rec("x", "p1", 0.5, committed=9, steps=3), _rec("x", "p2", 0.25),
            _rec("x", "p3", 4.0, tokens=other, committed=3, steps=3)]
    s = summarise(recs, "hf", ["hf", "x", "absent"])
    assert list(s) == ["hf", "x"]
    x = s["x"]
    assert x["speedup_median"] == 2.0
    assert x["speedup_overall"] == round((30 / 4.75) / (30 / 4.0), 3)
    assert x["tokens_per_s"] == round(30 / 4.75, 3) and x["tokens_per_s_median"] == 20.0  # 20, 40, 2.5
    assert x["tau"] == round((9 + 10 + 3) / (3 + 10 + 3), 3)
    assert (x["identical"], x["compared"]) == (2, 3)
    assert x["base_forwards"] == 3 + 10 + 3 and x["seconds"] == 4.75 and x["prompts"] == 3
    assert s["hf"]["identical"] is None and s["hf"]["speedup_overall"] == 1.0 and s["hf"]["speedup_median"] == 1.0
    assert s["hf"]["tau"] == 1.0


def test_summary_without_a_reference_and_partial_comparisons():
    recs = [_rec("a", "p1", 1.0), _rec("a", "p2", 1.0, turn=1)]
    s = summarise(recs)["a"]
    assert s["speedup_median"] is None and s["speedup_overall"] is None and s["identical"] is None
    # the reference ran only p1: x is compared on p1 alone
    s2 = summarise([_rec("ref", "p1", 1.0), _rec("x", "p1", 1.0), _rec("x", "p2", 1.0)], "ref")["x"]
    assert (s2["identical"], s2["compared"]) == (1, 1)
    assert summarise([_rec("ref", "p1", 1.0), _rec("x", "p1", 0.0)], "ref")["x"]["tokens_per_s"] is None


def test_record_tau_rule_and_json_shape():
    ours = Record.of("ours", "c", 0, [1, 2, 3], Generation([5, 6, 7, 8], forwards=3, accept_lengths=[3, 1]), 2.0)
    assert (ours.committed, ours.steps, ours.tau, ours.tokens_per_s) == (4, 2, 2.0, 2.0)
    hf = Record.of("hf", "c", 0, [1, 2, 3], Generation([5, 6, 7, 8], forwards=2), 1.0)
    assert (hf.committed, hf.steps, hf.tau) == (4, 2, 2.0)  # no accept lengths: tokens per base forward
    bare = Record.of("engine", "c", 0, [1], Generation([5]), 1.0)
    assert bare.steps == 0 and bare.to_json()["tau"] is None  # nothing to count steps with: no τ
    line = json.loads(json.dumps(ours.to_json()))
    assert line["accept_length_histogram"] == {"1": 1, "3": 1} and line["prompt_tokens"] == 3
    assert "prompt_ids" not in line and line["token_ids"] == [5, 6, 7, 8]


class _Counter:
    """A fake decode callable: answers `n` copies of (prompt length), counting its calls."""

    def __init__(self, report_seconds: float | None = None):
        self.calls: list[tuple[int, int]] = []
        self.report_seconds = report_seconds

    def __call__(self, ids: torch.Tensor, n: int) -> Generation:
        self.calls.append((ids.shape[1], n))
        return Generation([ids.shape[1]] * n, forwards=n, seconds=self.report_seconds)


class _Tok:
    def decode(self, tokens, skip_special_tokens=True):
        return " ".join(map(str, tokens))


def _render(messages: list[dict]) -> torch.Tensor:
    words = sum(len(m["content"].split()) for m in messages)
    return torch.zeros(1, words, dtype=torch.long)


def test_records_warm_up_history_and_timing_source():
    """Warm-up: one untimed short call per method first; `history_from`: every method sees the reference's
    answers; None: each its own; a callable that reports its own seconds is timed by them."""
    ref, own = _Counter(), _Counter(report_seconds=0.5)
    checked = []
    methods = [Method("ref", "ref", ref, before=lambda: checked.append(1)), Method("own", "own", own)]
    convs = [Conversation("c", ["a b", "c"])]
    shared = harness.run(methods, convs, _render, _Tok(), 3, torch.device("cpu"), history_from="ref", progress="")
    assert ref.calls[0] == (2, 3) and own.calls[0] == (2, 3)  # warm-up: min(8, 3) tokens on the first prompt
    assert len(checked) == 3  # before(): the warm-up and both turns
    assert [(r.method, r.turn) for r in shared] == [("ref", 0), ("own", 0), ("ref", 1), ("own", 1)]
    assert shared[2].prompt_ids == shared[3].prompt_ids  # turn 1 after the reference's answer, for both
    assert shared[1].seconds == 0.5 and shared[0].seconds > 0  # reported vs measured
    harness.mark_identical(shared, "ref")
    assert [r.identical for r in shared] == [None, True, None, True]
    alone = list(harness.records([Method("own", "own", _Counter())], convs, _render, _Tok(), 2,
                                 torch.device("cpu"), warmup_tokens=0))
    assert alone[1].prompt_tokens == 5  # "a b", its own answer "2 2", "c"
    with pytest.raises(ValueError, match="history_from"):
        list(harness.records(methods, convs, _render, _Tok(), 2, torch.device("cpu"), history_from="nope"))
