"""What both generation engines (local_engine.py, server_client.py) share: the conversation being
answered, the run's counters, and turning answered conversations into one committed part.

generate.py drives the engines; it sits above them, this module below.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from specforge_het.config import Config
from specforge_het.data import store

console = Console(stderr=True)


@dataclass
class Conv:
    """One conversation to answer: its user turns and, as they come, the base's answers."""

    index: int
    id: str
    system: str
    users: list[str]
    where: tuple[str, int]  # (file, line) for bad-input reports
    answers: list[str] = field(default_factory=list)
    skipped: str = ""  # reason, when skipped for good
    failed: str = ""  # request error (server mode): retried next run
    new_tokens: int = 0
    finish: list[str] = field(default_factory=list)  # per answer: "stop" | "length" (server mode: unknown)
    last_turn: tuple[list[int], list[int]] | None = None  # (prompt ids, generated ids) of the last answer, in process

    @property
    def finish_reason(self) -> str:
        """'length' when the last answer hit its token budget (the conversation ends there), else 'stop'."""
        return self.finish[-1] if self.finish else "stop"

    def messages(self, upto: int | None = None) -> list[dict]:
        """System (if any), then user/assistant turns; ends with user turn `upto` when given."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        last = len(self.users) - 1 if upto is None else upto
        for k in range(last + 1):
            msgs.append({"role": "user", "content": self.users[k]})
            if k < len(self.answers) and (upto is None or k < upto):
                msgs.append({"role": "assistant", "content": self.answers[k]})
        return msgs


@dataclass
class RunStats:
    resumed: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    new_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)


def part_size(g) -> int:
    return g.part_size if g.part_size > 0 else 4 * g.batch_size


def resolved_dtype(cfg: Config) -> str:
    """--dataset_generation.dtype, with auto resolved for this device (bfloat16 where it is fast). A run
    resuming into an output dir keeps the dtype recorded there, so a measured choice cannot flip mid-run."""
    from specforge_het.models.base import resolve_device
    from specforge_het.models.precision import fastest_dtype

    d = cfg.dataset_generation.dtype
    if d != "auto":
        return d
    out = Path(cfg.dataset_generation.output_dir)
    recorded = store.read_meta(out).get("dtype") if (out / store.META).is_file() else None
    return recorded or fastest_dtype(resolve_device(cfg.modeling.device))


def token_row(tokenizer, c: Conv) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) from the tokens the base saw and wrote in the conversation's last turn.

    The row is that turn's prompt (earlier answers in it are loss-masked where the template puts
    them) followed by exactly the generated ids: the end-of-turn token only if the base wrote it.
    """
    from specforge_het.data.formats import assistant_spans, uses_template

    assert c.last_turn is not None, "token_row needs the last turn's ids (in-process generation)"
    prompt, new = c.last_turn
    ids = [*prompt, *new]
    mask = [0] * len(prompt) + [1] * len(new)
    for start, end in assistant_spans(tokenizer, c.messages(len(c.answers) - 1), prompt, uses_template(tokenizer)):
        mask[start:end] = [1] * (end - start)
    return ids, mask


def finalize(tokenizer, convs: list[Conv], max_length: int, report) -> tuple[list[dict], list[dict]]:
    """Answered conversations into rows (`finish_reason` 'length' when the last answer hit its budget);
    too-long ones become skipped records.

    In-process generation keeps the exact tokens (`token_row`). Server answers come back as text
    and are tokenised with the chat template (`tokenize_conversation`).
    """
    from specforge_het.data.formats import TooLongError, tokenize_conversation

    rows, skipped = [], []
    for c in convs:
        if c.failed:
            continue
        if not c.skipped:
            try:
                if c.last_turn is not None:
                    ids, mask = token_row(tokenizer, c)
                else:
                    ids, mask = tokenize_conversation(tokenizer, c.messages(), max_length)
                rows.append({"id": c.id, "index": c.index, "input_ids": [int(x) for x in ids],
                             "loss_mask": [int(x) for x in mask], "finish_reason": c.finish_reason})
                continue
            except TooLongError as e:
                c.skipped = str(e)
            except ValueError as e:  # the chat template refuses the conversation
                c.skipped = f"template refused: {e}"
        report.add(c.where[0], c.where[1], c.skipped)
        skipped.append({"id": c.id, "index": c.index, "reason": c.skipped})
    return rows, skipped


def commit(out: Path, convs: list[Conv], rows: list[dict], skipped: list[dict], feats, stats: RunStats) -> None:
    if rows or skipped:
        store.write_part(out, rows, skipped, feats)
    for s in skipped:
        store.append_error(out, {"kind": "skipped", **s})
    for c in convs:
        if c.failed:
            store.append_error(out, {"kind": "request_failed", "id": c.id, "index": c.index, "error": c.failed})
    stats.done += len(rows)
    stats.skipped += len(skipped)
    stats.failed += sum(1 for c in convs if c.failed)
    stats.new_tokens += sum(c.new_tokens for c in convs)
    if not console.is_terminal:  # a log file: the live bar prints nothing until the run ends, so one line a part
        rate = stats.new_tokens / max(time.perf_counter() - stats.started, 1e-9)
        console.print(f"committed a part of {len(convs)}: {stats.done} conversations done this run, {stats.skipped} "
                      f"skipped, {stats.failed} failed; {stats.new_tokens} new tokens, {rate:.0f} tok/s", highlight=False, soft_wrap=True)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[note]}"), console=console)
