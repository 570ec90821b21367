"""Rich tables and the JSON line of an inference run."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from specforge_het.inference.harness import Record
from specforge_het.inference.runner import BASE, SPEC, turn_json


def device_info(device: torch.device, dtype: torch.dtype) -> dict:
    info = {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _short(text: str, n: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def turn_table(records: list[Record], prompts: dict[tuple[str, int], str]) -> Table:
    table = Table(title="per turn")
    for col in ("conv", "turn", "prompt", "mode", "new tok", "tok/s", "τ", "identical"):
        table.add_column(col, justify="right" if col in ("new tok", "tok/s", "τ") else "left")
    base = {r.key: r for r in records if r.method == BASE}
    for r in records:
        same = ""
        if r.method == SPEC and r.key in base:
            same = _same_cell(r, base[r.key])
        table.add_row(r.conversation, str(r.turn), _short(prompts.get(r.key, "")), r.method,
                      str(r.new_tokens), f"{r.tokens_per_s:.2f}", f"{r.tau:.2f}", same)
    return table


def _same_cell(spec: Record, base: Record) -> str:
    """The 'identical' cell of a speculative turn: yes, a near-tie flip or a real mismatch (at token p)."""
    if base.token_ids == spec.token_ids:
        return "[green]yes[/]"
    if spec.prompt_differs:
        return "[yellow]NO (prompt: earlier turn)[/]"
    d = spec.divergence
    if d is None:
        return "[red]NO[/]"
    return f"[yellow]near-tie @{d.position}[/]" if d.near_tie else f"[red]NO @{d.position}[/]"


def difference_lines(records: list[Record], summary: dict, dtype: str) -> list[str]:
    """The identical-outputs line (dtype stated), then one line per differing speculative turn."""
    ties, bad, later = (summary.get(k, 0) for k in ("near_tie", "mismatch", "prompt_differs"))
    unexplained = summary["compared"] - summary["identical"] - ties - bad - later
    counts = ""
    if summary["identical"] < summary["compared"]:
        counts = (f" · differing: {ties} near-tie flip(s), {bad} real mismatch(es), {later} after an earlier "
                  "turn's difference" + (f", {unexplained} not classified" if unexplained else ""))
    colour = "green" if not counts else "red" if bad or unexplained else "yellow"
    lines = [f"[bold {colour}]identical outputs: {summary['identical']}/{summary['compared']} ({dtype})[/]{counts}"]
    for r in records:
        if r.method == SPEC and r.divergence is not None:
            lines.append(f"  conversation {r.conversation} turn {r.turn}: {r.divergence.describe()}")
    if summary.get("near_tie", 0):
        lines.append("  [dim]near-tie flip: the base's two best tokens are closer than low-precision rounding can tell "
                     "apart (verifying N rows at once and decoding one row per step round differently); not a bug. "
                     "Exactness is checked in float32 (--modeling.dtype float32). See docs/inference.md.[/]")
    return lines


def summary_table(summary: dict, info: dict, tree: str, fast_paths: str = "") -> Table:
    fast = f" · fast paths {fast_paths}" if fast_paths else ""
    table = Table(title=f"summary · {info['device']} {info['dtype']} · {info['threads']} threads · tree {tree}{fast}")
    for col in ("mode", "turns", "new tokens", "decode s", "tok/s", "mean τ", "τ histogram"):
        table.add_column(col)
    for mode in (BASE, SPEC):
        if mode in summary:
            s = summary[mode]
            hist = " ".join(f"{k}:{v}" for k, v in s["accept_length_histogram"].items())
            table.add_row(mode, str(s["prompts"]), str(s["new_tokens"]), f"{s['seconds']:.2f}",
                          f"{s['tokens_per_s']:.2f}", f"{s['tau']:.2f}", hist)
    return table


def print_report(records, summary, info, prompts, tree: str, fast_paths: str = "",
                 console: Console | None = None) -> None:
    console = console or Console()
    console.print(turn_table(records, prompts))
    console.print(summary_table(summary, info, tree, fast_paths))
    if "speedup" in summary:
        first, *rest = difference_lines(records, summary, info["dtype"])
        console.print(f"[bold]speed-up: {summary['speedup']:.2f}x[/]   {first}")
        for line in rest:
            console.print(line)


def append_json(outfile: str | Path, config: dict, presets: list[str], records, summary, info) -> None:
    line = {"config": config, "presets": presets, "device": info, "summary": summary,
            "turns": [turn_json(r) for r in records]}
    path = Path(outfile)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
