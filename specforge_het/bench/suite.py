"""Prompt sets, peak memory, and the bench's run of the evaluation harness (inference/harness.py): every
method on the same token ids, interleaved per prompt.

For a multi-turn conversation (MT-Bench), turn k is rendered after the baseline's (HF generate's)
answers to turns < k, so every method sees exactly the same prompt token ids.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from specforge_het.bench.methods import BASELINE
from specforge_het.inference import harness
from specforge_het.inference.harness import Method, Record
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


def run_suite(methods: list[Method], conversations: list[Conversation], base, inf, memory: PeakMemory) -> list[Record]:
    """All methods through the evaluation harness, interleaved per prompt, every turn rendered after the
    baseline's (HF generate's) answers; `identical` marked against the baseline."""
    if not methods or methods[0].name != BASELINE:
        raise ValueError(f"the first method must be the baseline '{BASELINE}'")
    tok = base.tokenizer

    def render_chat(messages: list[dict]) -> torch.Tensor:
        return render(tok, messages, inf.chat_template, inf.system_prompt)

    records = harness.run(methods, conversations, render_chat, tok, inf.max_new_tokens, base.device,
                          history_from=BASELINE, warmup_tokens=harness.WARMUP_TOKENS if inf.warmup else 0,
                          memory=memory, progress="bench")
    harness.mark_identical(records, BASELINE)
    return records


def explain_differences(base, records: list[Record]) -> None:
    """Every record whose tokens differ from the baseline's on the same prompt gets its first difference,
    classified as a near-tie flip or a real mismatch (inference/divergence.py). Run after the timed suite."""
    harness.explain_differences(base, records, BASELINE)
