"""Prompt sets and the measurement loop: every method on the same token ids, interleaved per prompt.

For a multi-turn conversation (MT-Bench), turn k is rendered after the baseline's (HF generate's)
answers to turns < k, so every method sees exactly the same prompt token ids.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.progress import Progress

from specforge_het.bench.integrity import check_plain
from specforge_het.bench.methods import BASELINE, Method
from specforge_het.inference.divergence import Divergence, explain_divergence
from specforge_het.inference.prompts import Conversation, load_conversations, render, split_count

PROMPTS_HELP = "mtbench[:N] | gsm8k:PATH[:N] | PATH.jsonl[:N]"


def load_prompts(spec: str) -> list[Conversation]:
    """'mtbench:N' (shipped MT-Bench, both turns), 'gsm8k:PATH[:N]' (GSM8K test JSONL), or 'PATH.jsonl[:N]'."""
    spec = str(spec)
    if spec == "mtbench" or spec.startswith("mtbench:"):
        return load_conversations(spec)
    if spec.startswith("gsm8k:"):
        path, count = split_count(spec.removeprefix("gsm8k:"))
        if not path:
            raise ValueError("gsm8k needs the path of the GSM8K test JSONL: --prompts gsm8k:PATH[:N]")
        return load_conversations(path if count is None else f"{path}:{count}")
    path, _ = split_count(spec)
    if not Path(path).is_file():
        raise FileNotFoundError(f"prompt set '{spec}' is not a file; give {PROMPTS_HELP}")
    return load_conversations(spec)


@dataclass
class Record:
    """One method on one prompt (one turn of a conversation)."""

    method: str
    conversation: str
    turn: int
    prompt_tokens: int
    new_tokens: int
    seconds: float  # wall time of the whole call, prefill included
    forwards: int  # base forward calls: HF = generate's steps (CountForwards); ours = prefill + decode steps
    committed: int  # tokens committed by decode steps (τ numerator)
    steps: int  # decode steps (τ denominator): ours = verify steps; HF = base forwards
    peak_mb: float | None
    token_ids: list[int] = field(default_factory=list)
    identical: bool | None = None  # same token ids as the baseline (None for the baseline itself)
    divergence: Divergence | None = None  # where and why it differs from the baseline (explain_differences)
    prompt_ids: list[int] = field(default_factory=list, repr=False)  # not written to the JSON

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def tau(self) -> float:
        return self.committed / self.steps if self.steps else float("nan")

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("prompt_ids")
        out.update(seconds=round(self.seconds, 5), tokens_per_s=round(self.tokens_per_s, 3), tau=round(self.tau, 3),
                   divergence=None if self.divergence is None else self.divergence.to_json())
        return out


class PeakMemory:
    """Peak memory of one call: CUDA allocator peak, or the process's peak RSS (VmHWM) on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS (VmHWM)"
        self.note = ""
        if device.type != "cuda" and not self._clear_hwm():
            self.kind, self.note = "unavailable", "cannot reset VmHWM (/proc/self/clear_refs): peak memory not measured"

    @staticmethod
    def _clear_hwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return PeakMemory._hwm_kb() is not None
        except OSError:
            return False

    @staticmethod
    def _hwm_kb() -> int | None:
        try:
            m = re.search(r"VmHWM:\s+(\d+)\s*kB", Path("/proc/self/status").read_text())
        except OSError:
            return None
        return int(m.group(1)) if m else None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind != "unavailable":
            self._clear_hwm()

    def read_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        kb = None if self.kind == "unavailable" else self._hwm_kb()
        return None if kb is None else kb / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(method: Method, ids: torch.Tensor, max_new_tokens: int, memory: PeakMemory,
            device: torch.device, conversation: str = "", turn: int = 0) -> Record:
    """Run one method on one prompt: wall time, base forwards, τ figures, peak memory. An HF peer's
    models are checked to be plain HF first (untimed; RuntimeError if not)."""
    check_plain(method.label, method.plain)
    memory.reset()
    _sync(device)
    t0 = time.perf_counter()
    gen = method.run(ids, max_new_tokens)
    _sync(device)
    seconds = time.perf_counter() - t0
    n, forwards = len(gen.tokens), gen.forwards
    if gen.accept_lengths:  # ours: the decoder's own accept statistics
        committed, steps = sum(gen.accept_lengths), len(gen.accept_lengths)
    else:  # HF (whose first forward also verifies), or ours without any decode step
        committed, steps = n, forwards
    return Record(method.name, conversation, turn, ids.shape[1], n, seconds, forwards, committed, steps,
                  memory.read_mb(), list(gen.tokens), prompt_ids=ids[0].tolist())


def warm_up(methods: list[Method], ids: torch.Tensor, max_new_tokens: int) -> None:
    for m in methods:
        check_plain(m.label, m.plain)
        m.run(ids, min(8, max_new_tokens))


def run_suite(methods: list[Method], conversations: list[Conversation], base, inf, memory: PeakMemory) -> list[Record]:
    """All methods, interleaved per prompt (baseline first: its answer is the next turn's history)."""
    if not methods or methods[0].name != BASELINE:
        raise ValueError(f"the first method must be the baseline '{BASELINE}'")
    tok = base.tokenizer
    first = render(tok, [{"role": "user", "content": conversations[0].turns[0]}], inf.chat_template, inf.system_prompt)
    if inf.warmup:
        warm_up(methods, first, inf.max_new_tokens)
    records: list[Record] = []
    total = sum(len(c.turns) for c in conversations) * len(methods)
    with Progress(transient=True) as progress:
        task = progress.add_task("bench", total=total)
        for conv in conversations:
            messages: list[dict] = []
            for k, user in enumerate(conv.turns):
                messages.append({"role": "user", "content": user})
                ids = render(tok, messages, inf.chat_template, inf.system_prompt)
                ref: Record | None = None
                for m in methods:
                    progress.update(task, description=f"{m.name} · {conv.id} turn {k}")
                    rec = measure(m, ids, inf.max_new_tokens, memory, base.device, conv.id, k)
                    ref = rec if ref is None else ref
                    rec.identical = None if rec is ref else rec.token_ids == ref.token_ids
                    records.append(rec)
                    progress.advance(task)
                assert ref is not None  # methods is never empty: hf, the reference, always runs
                messages.append({"role": "assistant", "content": tok.decode(ref.token_ids, skip_special_tokens=True)})
    return records


def explain_differences(base, records: list[Record]) -> None:
    """Every record whose tokens differ from the baseline's on the same prompt gets its first difference,
    classified as a near-tie flip or a real mismatch (inference/divergence.py), from one base forward
    over prompt + common prefix. Run after the timed suite."""
    ref = {(r.conversation, r.turn): r for r in records if r.method == BASELINE}
    for r in records:
        base_rec = ref.get((r.conversation, r.turn))
        if r.identical is False and base_rec is not None:
            r.divergence = explain_divergence(base, base_rec.prompt_ids, base_rec.token_ids, r.token_ids)
