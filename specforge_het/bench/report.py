"""The bench's rich table, its header, and the JSON file (all per-prompt records and the summary)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.table import Table

from specforge_het.bench.methods import BASELINE
from specforge_het.inference.fast_paths import FastPaths
from specforge_het.models.linears import kernel_choices


def header_info(base, draft_name: str, command: str, memory_kind: str, fast_paths: str = "auto") -> dict:
    import transformers

    info = {
        "device": str(base.device), "dtype": str(base.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "cpu": platform.processor() or platform.machine(),
        "base": base.name, "draft": draft_name or "none", "command": command, "peak_memory": memory_kind,
        "fast_paths": {"ours": FastPaths.resolve(fast_paths, base.device).to_json(),
                       "hf": "plain HF modules: no instance-level forward, no hooks (checked before every call)"},
    }
    if base.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(base.device)
    return info


def _fmt(x, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if x is None else f"{x:{spec}}{suffix}"


def summary_table(summary: dict[str, dict], labels: dict[str, str], dtype: str = "") -> Table:
    """One row per method; speed-up = tokens/s ratio to HF generate (base-only): median over prompts, overall.
    identical: green all, yellow when every difference is a near-tie flip, red otherwise."""
    in_dtype = f", outputs compared in {dtype}" if dtype else ""
    table = Table(title=f"vs HF generate (base-only): same prompts, same process{in_dtype}", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    cols = ("method", "speed-up", "overall", "τ", "tok/s", "identical", "peak MB")
    for col in cols:
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=col == "method")
    for name, s in summary.items():
        if s["compared"] is None:
            same = "ref"
        else:
            differ = s["compared"] - s["identical"]
            colour = "green" if not differ else "yellow" if s.get("near_tie") == differ else "red"
            same = f"[{colour}]{s['identical']}/{s['compared']}[/]"
        table.add_row(labels.get(name, name), _fmt(s["speedup_median"], ".2f", "x"), _fmt(s["speedup_overall"], ".2f", "x"),
                      _fmt(s["tau"]), _fmt(s["tokens_per_s"]), same, _fmt(s["peak_mb"], ".0f"))
    return table


def header_lines(info: dict, n_prompts: int, max_new_tokens: int) -> list[str]:
    gpu = f" ({info['gpu']})" if "gpu" in info else ""
    return [
        f"[bold]bench[/] · {info['device']}{gpu} · {info['dtype']} · {info['torch_threads']} torch threads · "
        f"torch {info['torch']} · transformers {info['transformers']}",
        f"base {info['base']} · draft {info['draft']} · {n_prompts} prompts · max_new_tokens {max_new_tokens} · "
        "greedy · batch 1 · time = whole call, prefill included",
        f"fast paths: ours {info['fast_paths']['ours']['describe']} · HF peers on the plain HF model"
        if "fast_paths" in info else "fast paths: –",
        f"command: {info['command']}",
    ]


def print_report(info: dict, summary: dict, labels: dict, skipped: dict, mismatched: dict[str, list],
                 n_prompts: int, max_new_tokens: int, console: Console | None = None,
                 divergent: dict[str, list] | None = None) -> None:
    """`divergent`: method -> (conversation, turn, divergence) of its classified differences, one line each."""
    console = console or Console()
    for line in header_lines(info, n_prompts, max_new_tokens):
        console.print(line, highlight=False)
    console.print(summary_table(summary, labels, info.get("dtype", "")))
    console.print("[dim]speed-up: median over prompts of the tokens/s ratio; overall: total tokens/s ratio. "
                  "τ: ours = tokens committed per verify step (the decoder's accept stats); HF = new tokens / base "
                  f"forward calls (generate's steps). peak MB: {info['peak_memory']}.[/]")
    for name, reason in skipped.items():
        console.print(f"[yellow]skipped {labels.get(name, name)}: {reason}[/]")
    for name, where in mismatched.items():
        if where:
            shown = ", ".join(f"{c} turn {t}" for c, t in where[:6])
            note = " Our base-only decoder must equal HF generate: please report this." if name == "ours-base" else ""
            found = (divergent or {}).get(name, [])
            ties = sum(d.near_tie for _, _, d in found)
            verdicts = (f" In {info.get('dtype', '?')}: {ties} near-tie flip(s), {len(found) - ties} real mismatch(es)"
                        f"{'' if len(found) == len(where) else f', {len(where) - len(found)} not classified'}.")
            colour = "yellow" if found and ties == len(where) else "red"
            console.print(f"[bold {colour}]{labels.get(name, name)}: output differs from {labels[BASELINE]} on "
                          f"{len(where)} prompt(s): {shown}.[/]{verdicts}{note}")
            for conv, turn, d in found[:6]:
                console.print(f"  [dim]{conv} turn {turn}: {d.describe()}[/]")
    if any(d.near_tie for found in (divergent or {}).values() for _, _, d in found):
        console.print("[dim]near-tie flip: the base's two best tokens are closer than low-precision rounding can tell "
                      "apart (verifying N rows at once vs one row per step round differently); not a bug. Exactness is "
                      "checked in float32. See docs/inference.md.[/]")


def write_json(path: str | Path, info: dict, labels: dict, skipped: dict, summary: dict, records, config: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"header": info, "methods": labels, "skipped": skipped, "summary": summary,
               "records": [r.to_json() for r in records], "config": config,
               "kernels": kernel_choices()}  # the few-row kernels our rows ran on (models/linears.py)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
