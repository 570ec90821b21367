"""Bad-input report shared by every data reader: problems are reported with file:line and a
reason, counted, and skipped; with `strict` the first one is a failure instead.

    report = BadInputReport(strict=cfg.dataset_generation.strict)
    report.add("prompts.jsonl", 12, "unknown role: bot")   # skipped (or BadInputError if strict)
    report.print_summary()

Reasons are grouped by the text before their first ':' ("unknown role: bot" and
"unknown role: narrator" both count under "unknown role"), so give the category first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table

STRICT_FLAG = "--dataset_generation.strict"


class BadInputError(ValueError):
    """A bad input met with `strict` on; the message names file:line, the reason and how to skip instead."""


@dataclass(frozen=True)
class BadInput:
    file: str
    line: int  # 1-based line (item number for a .json list); 0 = the whole file
    reason: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    @property
    def category(self) -> str:
        return self.reason.split(":", 1)[0].strip()


class BadInputReport:
    """Collects bad inputs `(file, line, reason)`; `strict=True` raises on the first one."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.problems: list[BadInput] = []

    def add(self, file: str, line: int, reason: str) -> None:
        problem = BadInput(str(file), int(line), reason)
        if self.strict:
            raise BadInputError(
                f"{problem.where}: {reason}. Stopped because {STRICT_FLAG} is on; "
                f"drop {STRICT_FLAG} to skip bad inputs and get a summary at the end instead."
            )
        self.problems.append(problem)

    @property
    def count(self) -> int:
        return len(self.problems)

    @property
    def by_reason(self) -> dict[str, int]:
        """Skipped inputs per reason category, most frequent first."""
        return dict(Counter(p.category for p in self.problems).most_common())

    def summary_table(self, examples: int = 3) -> Table:
        """One row per reason: count and the first few file:line locations."""
        table = Table(title=f"bad inputs skipped: {self.count}")
        table.add_column("reason")
        table.add_column("count", justify="right")
        table.add_column("first locations", overflow="fold")
        for category, n in self.by_reason.items():
            where = [p.where for p in self.problems if p.category == category][:examples]
            more = ", …" if n > examples else ""
            table.add_row(escape(category), str(n), escape(", ".join(where) + more))
        return table

    def print_summary(self, console: Console | None = None, lines: int = 10) -> None:
        """The first `lines` problems in full, then the table by reason (or one green line if none)."""
        console = console or Console(stderr=True)
        if not self.problems:
            console.print("[green]no bad inputs[/]")
            return
        for p in self.problems[:lines]:
            console.print(f"[yellow]skipped[/] {escape(p.where)}: {escape(p.reason)}", highlight=False)
        if self.count > lines:
            console.print(f"[yellow]… and {self.count - lines} more[/]")
        console.print(self.summary_table())
