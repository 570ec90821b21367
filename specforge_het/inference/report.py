"""Rich tables and the JSON line of an inference run."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from specforge_het.inference.runner import BASE, SPEC, TurnRecord


def device_info(device: torch.device, dtype: torch.dtype) -> dict:
    info = {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _short(text: str, n: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def turn_table(records: list[TurnRecord], prompts: dict[tuple[str, int], str]) -> Table:
    table = Table(title="per turn")
    for col in ("conv", "turn", "prompt", "mode", "new tok", "tok/s", "τ", "identical"):
        table.add_column(col, justify="right" if col in ("new tok", "tok/s", "τ") else "left")
    base = {(r.conversation, r.turn): r for r in records if r.mode == BASE}
    for r in records:
        same = ""
        if r.mode == SPEC and (r.conversation, r.turn) in base:
            same = "[green]yes[/]" if base[(r.conversation, r.turn)].token_ids == r.token_ids else "[red]NO[/]"
        table.add_row(r.conversation, str(r.turn), _short(prompts.get((r.conversation, r.turn), "")), r.mode,
                      str(r.new_tokens), f"{r.tokens_per_s:.2f}", f"{r.tau:.2f}", same)
    return table


def summary_table(summary: dict, info: dict, tree: str, fast_paths: str = "") -> Table:
    fast = f" · fast paths {fast_paths}" if fast_paths else ""
    table = Table(title=f"summary · {info['device']} {info['dtype']} · {info['threads']} threads · tree {tree}{fast}")
    for col in ("mode", "turns", "new tokens", "decode s", "tok/s", "mean τ", "τ histogram"):
        table.add_column(col)
    for mode in (BASE, SPEC):
        if mode in summary:
            s = summary[mode]
            hist = " ".join(f"{k}:{v}" for k, v in s["accept_length_histogram"].items())
            table.add_row(mode, str(s["turns"]), str(s["new_tokens"]), f"{s['decode_s']:.2f}",
                          f"{s['tokens_per_s']:.2f}", f"{s['tau']:.2f}", hist)
    return table


def print_report(records, summary, info, prompts, tree: str, fast_paths: str = "",
                 console: Console | None = None) -> None:
    console = console or Console()
    console.print(turn_table(records, prompts))
    console.print(summary_table(summary, info, tree, fast_paths))
    if "speedup" in summary:
        ok = summary["identical"] == summary["compared"]
        colour = "green" if ok else "red"
        console.print(f"[bold]speed-up: {summary['speedup']:.2f}x[/]   "
                      f"[bold {colour}]identical outputs: {summary['identical']}/{summary['compared']}[/]")


def append_json(outfile: str | Path, config: dict, presets: list[str], records, summary, info) -> None:
    line = {"config": config, "presets": presets, "device": info, "summary": summary,
            "turns": [r.to_json() for r in records]}
    path = Path(outfile)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
