"""The evaluation harness: one record type, one decode loop, one summary, one JSON shape.

Used by `python -m specforge_het.inference` (`--inference.compare`), the bench, the `--inference.tree auto`
calibration (its base answers go through `records`, its micro-timings through `timed`), the eagle_v2 bridge
and the SGLang demo (records and summary only: SGLang batches requests inside its own engine).

- `Generation`: what a decode callable returns for one prompt.
- `Method`: a named decode callable `run(input_ids [1, n], max_new_tokens) -> Generation`, with an optional
  untimed check run before every call (`before`: the bench's plain-HF check).
- `Record`: one method on one prompt (one turn of a conversation); `Record.to_json()` is the one JSON shape.
- `records(...)` / `run(...)`: every method on every turn of every conversation, turn by turn (methods
  interleaved per prompt), after an untimed warm-up. Each call is timed with `time.perf_counter`, the
  device synchronised before and after: `Record.seconds` is the whole call, prefill included, unless the
  callable reports its own `Generation.seconds` (the inference CLI: decoding after the prefill).
- `summarise(records, reference)`: per method, tokens/s (overall and median per prompt), τ, speed-up against
  the reference (median of the per-prompt ratios, and overall) and outputs identical to the reference's.

τ = committed tokens / steps: the decoder's accept lengths when it reports any verify step, else new tokens
per base forward (HF generate, whose every step is one base forward).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from specforge_het.inference.divergence import Divergence, explain_divergence
from specforge_het.inference.prompts import Conversation

T = TypeVar("T")
Render = Callable[[list[dict]], torch.Tensor]  # messages (ending in a user turn) -> prompt ids [1, n]
WARMUP_TOKENS = 8


@dataclass
class Generation:
    tokens: list[int]  # new tokens, EOS included when it stopped there
    forwards: int | None = None  # base forwards: ours = prefill + decode steps; HF = generate's steps
    accept_lengths: list[int] | None = None  # tokens committed per verify step (prefill not counted)
    seconds: float | None = None  # the callable's own timing; None: the harness's wall time of the whole call


@dataclass
class Method:
    name: str
    label: str
    run: Callable[[torch.Tensor, int], Generation]
    info: dict | None = None  # extra facts for a JSON (e.g. the auto tree's decision)
    before: Callable[[], None] | None = None  # untimed, before every call (warm-up included)


def decoder_method(name: str, decoder, label: str = "", decode_only: bool = False) -> Method:
    """A `Decoder` as a method; `decode_only`: time the decoding after the prefill (the decoder's own clock)."""

    def run(input_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        res = decoder.generate(input_ids, max_new_tokens)
        return Generation(res.tokens, forwards=1 + res.steps, accept_lengths=list(res.accept_lengths),
                          seconds=res.decode_s if decode_only else None)

    return Method(name, label or name, run)


def _round(x: float | None, n: int = 3) -> float | None:
    return None if x is None or math.isnan(x) else round(x, n)


def histogram(lengths: Iterable[int]) -> dict[int, int]:
    return dict(sorted(Counter(lengths).items()))


@dataclass
class Record:
    """One method on one prompt (one turn of a conversation)."""

    method: str
    conversation: str
    turn: int
    prompt_tokens: int
    new_tokens: int
    seconds: float  # see the module docstring
    committed: int  # τ numerator
    steps: int  # τ denominator: verify steps (ours), base forwards (HF)
    forwards: int | None = None  # base forward calls, when the method reports them
    accept_lengths: list[int] = field(default_factory=list)
    peak_mb: float | None = None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    identical: bool | None = None  # same token ids as the reference's on this prompt (None: the reference, or none)
    divergence: Divergence | None = None  # where and why it differs from the reference (explain_differences)
    prompt_differs: bool = False  # its prompt differs from the reference's (an earlier answer did)
    prompt_ids: list[int] = field(default_factory=list, repr=False)  # not written to the JSON

    @classmethod
    def of(cls, method: str, conversation: str, turn: int, prompt_ids: list[int], gen: Generation, seconds: float,
           peak_mb: float | None = None, text: str = "") -> Record:
        n = len(gen.tokens)
        if gen.accept_lengths:
            committed, steps = sum(gen.accept_lengths), len(gen.accept_lengths)
        elif gen.forwards is not None:  # HF, or ours without any decode step
            committed, steps = n, gen.forwards
        else:
            committed = steps = 0
        return cls(method, conversation, turn, len(prompt_ids), n, seconds, committed, steps, gen.forwards,
                   list(gen.accept_lengths or []), peak_mb, list(gen.tokens), text, prompt_ids=list(prompt_ids))

    @property
    def key(self) -> tuple[str, int]:
        return self.conversation, self.turn

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def tau(self) -> float:
        return self.committed / self.steps if self.steps else float("nan")

    def to_json(self) -> dict:
        return {
            "method": self.method, "conversation": self.conversation, "turn": self.turn,
            "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens, "seconds": round(self.seconds, 5),
            "tokens_per_s": _round(self.tokens_per_s), "tau": _round(self.tau), "committed": self.committed,
            "steps": self.steps, "forwards": self.forwards, "accept_length_histogram": histogram(self.accept_lengths),
            "peak_mb": self.peak_mb, "token_ids": self.token_ids, "text": self.text, "identical": self.identical,
            "divergence": None if self.divergence is None else self.divergence.to_json(),
            "prompt_differs": self.prompt_differs,
        }


# ---------------------------------------------------------------- timing and the decode loop


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """(fn(), its wall seconds), the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def measure(method: Method, ids: torch.Tensor, max_new_tokens: int, device: torch.device, memory=None,
            conversation: str = "", turn: int = 0, tokenizer=None) -> Record:
    """One method on one prompt ids [1, n]. `memory` (reset(), read_mb()): the peak of this call."""
    if method.before is not None:
        method.before()
    if memory is not None:
        memory.reset()
    gen, wall = timed(lambda: method.run(ids, max_new_tokens), device)
    peak = None if memory is None else memory.read_mb()
    text = "" if tokenizer is None else tokenizer.decode(gen.tokens, skip_special_tokens=True)
    seconds = wall if gen.seconds is None else gen.seconds
    return Record.of(method.name, conversation, turn, ids[0].tolist(), gen, seconds, peak, text)


def warm_up(methods: Sequence[Method], ids: torch.Tensor, max_new_tokens: int) -> None:
    for m in methods:
        if m.before is not None:
            m.before()
        m.run(ids, max_new_tokens)


def records(methods: Sequence[Method], conversations: Sequence[Conversation], render: Render, tokenizer,
            max_new_tokens: int, device: torch.device, history_from: str | None = None,
            warmup_tokens: int = WARMUP_TOKENS, memory=None) -> Iterator[Record]:
    """Every method on every turn, methods interleaved per turn, after an untimed warm-up (`warmup_tokens`
    new tokens on the first prompt; 0: none). Turn k is asked after the answers to the turns before it:
    `history_from`'s answers for every method (the same prompt ids for all), or None: each method's own."""
    if history_from is not None and history_from not in {m.name for m in methods}:
        raise ValueError(f"history_from '{history_from}' is not one of the methods")
    if warmup_tokens > 0 and conversations and methods:
        first = render([{"role": "user", "content": conversations[0].turns[0]}])
        warm_up(methods, first, min(warmup_tokens, max_new_tokens))
    for conv in conversations:
        history: dict[str, list[dict]] = {m.name: [] for m in methods}
        for k, text in enumerate(conv.turns):
            user = {"role": "user", "content": text}
            answers: dict[str, str] = {}
            for m in methods:
                ids = render([*history[history_from or m.name], user])
                rec = measure(m, ids, max_new_tokens, device, memory, conv.id, k, tokenizer)
                answers[m.name] = rec.text
                yield rec
            for m in methods:
                history[m.name] += [user, {"role": "assistant", "content": answers[history_from or m.name]}]


def run(methods: Sequence[Method], conversations: Sequence[Conversation], render: Render, tokenizer,
        max_new_tokens: int, device: torch.device, history_from: str | None = None,
        warmup_tokens: int = WARMUP_TOKENS, memory=None, progress: str = "decoding") -> list[Record]:
    """`records(...)` collected, with a transient progress bar (`progress`: its title; '' for none)."""
    found = records(methods, conversations, render, tokenizer, max_new_tokens, device, history_from,
                    warmup_tokens, memory)
    if not progress:
        return list(found)
    from rich.progress import Progress

    out: list[Record] = []
    with Progress(transient=True) as bar:
        task = bar.add_task(progress, total=sum(len(c.turns) for c in conversations) * len(methods))
        for rec in found:
            out.append(rec)
            bar.update(task, advance=1, description=f"{rec.method} · {rec.conversation} turn {rec.turn}")
    return out


# ---------------------------------------------------------------- against the reference


def _by_key(records: Iterable[Record], method: str | None) -> dict[tuple[str, int], Record]:
    return {r.key: r for r in records if r.method == method}


def mark_identical(records: Sequence[Record], reference: str) -> None:
    """`identical` of every record: its token ids equal the reference's on the same prompt (None for the
    reference's own records and where the reference has no record)."""
    ref = _by_key(records, reference)
    for r in records:
        other = ref.get(r.key)
        r.identical = None if r.method == reference or other is None else r.token_ids == other.token_ids


def explain_differences(base, records: Sequence[Record], reference: str) -> None:
    """Every record whose tokens differ from the reference's on the same prompt: its first difference, a
    near-tie flip or a real mismatch (inference/divergence.py), from one base forward; a record whose
    prompt already differs (each method answering its own history) is only marked. Run after timing."""
    ref = _by_key(records, reference)
    for r in records:
        other = ref.get(r.key)
        if r.method == reference or other is None or other.token_ids == r.token_ids:
            continue
        if other.prompt_ids != r.prompt_ids:
            r.prompt_differs = True
        else:
            r.divergence = explain_divergence(base, other.prompt_ids, other.token_ids, r.token_ids)


# ---------------------------------------------------------------- the summary


def speedups(baseline_tps: dict, method_tps: dict) -> list[float]:
    """Per-prompt speed-up = method tokens/s / baseline tokens/s, for prompts both ran (keys in common)."""
    out = []
    for key, tps in method_tps.items():
        ref = baseline_tps.get(key)
        if ref and ref > 0 and tps == tps:  # skip missing, zero and NaN
            out.append(tps / ref)
    return out


def overall_tps(new_tokens: Sequence[int], seconds: Sequence[float]) -> float:
    """Tokens/s over a whole run: all new tokens / all wall time."""
    total = sum(seconds)
    return sum(new_tokens) / total if total > 0 else float("nan")


def median_or_nan(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def identical_count(recs: Sequence[Record], ref: dict[tuple[str, int], Record]) -> tuple[int, int]:
    """(prompts with the same token ids as `ref`'s, prompts both ran)."""
    both = [r for r in recs if r.key in ref]
    return sum(r.token_ids == ref[r.key].token_ids for r in both), len(both)


def summarise(records: Sequence[Record], reference: str | None = None,
              order: Sequence[str] | None = None) -> dict[str, dict]:
    """{method: figures} for every method in `order` (default: as they appear) that has records.

    tokens_per_s: all new tokens / all seconds; tokens_per_s_median: median over prompts. speedup_median:
    median over prompts of the tokens/s ratio to the reference; speedup_overall: overall tokens/s ratio.
    tau: committed / steps, pooled. identical/compared, near_tie/mismatch, prompt_differs: against the
    reference (None for the reference itself, and without one).
    """
    by_method: dict[str, list[Record]] = {}
    for r in records:
        by_method.setdefault(r.method, []).append(r)
    ref = _by_key(records, reference)
    names = list(order) if order is not None else list(by_method)
    return {name: _row(by_method[name], ref, name == reference) for name in names if by_method.get(name)}


def _row(recs: list[Record], ref: dict[tuple[str, int], Record], is_reference: bool) -> dict:
    tps = overall_tps([r.new_tokens for r in recs], [r.seconds for r in recs])
    ref_tps = overall_tps([r.new_tokens for r in ref.values()], [r.seconds for r in ref.values()])
    ratios = speedups({k: r.tokens_per_s for k, r in ref.items()}, {r.key: r.tokens_per_s for r in recs})
    steps, peaks = sum(r.steps for r in recs), [r.peak_mb for r in recs if r.peak_mb is not None]
    forwards = [r.forwards for r in recs]
    against = bool(ref) and not is_reference
    same, compared = identical_count(recs, ref)
    return {
        "prompts": len(recs),
        "new_tokens": sum(r.new_tokens for r in recs),
        "seconds": _round(sum(r.seconds for r in recs), 4),
        "tokens_per_s": _round(tps),
        "tokens_per_s_median": _round(median_or_nan([r.tokens_per_s for r in recs if r.seconds > 0])),
        "speedup_median": _round(median_or_nan(ratios)) if ref else None,
        "speedup_overall": _round(tps / ref_tps) if ref and ref_tps > 0 else None,
        "tau": _round(sum(r.committed for r in recs) / steps) if steps else None,
        "accept_length_histogram": histogram(a for r in recs for a in r.accept_lengths),
        "base_forwards": sum(f for f in forwards if f is not None) if None not in forwards else None,
        "identical": same if against else None,
        "compared": compared if against else None,
        "near_tie": sum(r.divergence is not None and r.divergence.near_tie for r in recs) if against else None,
        "mismatch": sum(r.divergence is not None and not r.divergence.near_tie for r in recs) if against else None,
        "prompt_differs": sum(r.prompt_differs for r in recs) if against else None,
        "peak_mb": _round(max(peaks), 1) if peaks else None,
    }
