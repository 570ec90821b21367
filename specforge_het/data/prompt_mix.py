"""`mix_prompts` and `check_prompts`, and the report every prompt verb writes and prints.

    mix_prompts OUT SRC[:N] [SRC[:N] ...]   prompt files -> one conversations JSONL: deduplicated,
                                            evaluation prompts kept out, shuffled with a seed
    check_prompts FILE                      which prompts of FILE overlap an evaluation set (exit 1 if any)

A SRC is any file `prepare_data` reads (our schema, ShareGPT, GSM8K `question`, `prompt`, …) or
`train_prompts` (the shipped training prompts); `:N` takes a seeded sample of N of its rows.
Sources are filtered in command-line order, so when two sources hold the same prompt the first
keeps it. Rows are shuffled after filtering, so every `ds_range` of `gen_dataset` mixes sources.
`--append` grows an earlier mix (the first SRC): its rows stay first and unchanged, the new ones follow.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from specforge_het.config import Config
from specforge_het.data.dedup import FILES, EvalSets, FilterSettings, PromptFilter, overlap_counts
from specforge_het.data.formats import write_conversations
from specforge_het.data.report import BadInputReport

console = Console(stderr=True)


class PromptsOverlapError(Exception):
    """`check_prompts` found prompts that overlap an evaluation set (the table lists them); exit status 1."""


ALIASES = {"train_prompts": FILES / "train_prompts.jsonl"}
GEN_REASONS = ["no end of turn", "other special token"]


# ---------------------------------------------------------------- report

def report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".report.json")


def write_report(out: Path, verb: str, filt: PromptFilter, total: int, written: int, settings: dict,
                 extra: dict | None = None) -> dict:
    """OUT.report.json: counts in filter order, evaluation overlaps, dropped examples, settings."""
    reasons = [r for r in GEN_REASONS if filt.counts.get(r)] + filt.reasons()
    report = {
        "verb": verb, "out": str(out), "input": total,
        "dropped": {r: filt.counts.get(r, 0) for r in reasons},
        "kept": filt.counts.get("kept", 0), "written": written,
        "eval_sets": {name: {"prompts": filt.evals.sizes[name], "overlapping": count}
                      for name, count in overlap_counts(filt).items()},
        "eval_overlap_threshold": filt.evals.threshold,
        "filters": vars(filt.settings), "settings": settings, **(extra or {}),
        "overlaps": filt.overlaps[:100], "dropped_examples": filt.examples,
    }
    report_path(out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def print_report(report: dict, out: Console | None = None) -> None:
    out = out or console
    table = Table(title=f"{report['verb']} -> {report['out']}")
    table.add_column("stage")
    table.add_column("prompts", justify="right")
    table.add_row("generated" if report["verb"] == "gen_prompts" else "read", str(report["input"]))
    for reason, n in report["dropped"].items():
        table.add_row(f"  dropped: {reason}", str(n), style="" if n else "dim")
    table.add_row("kept", str(report["kept"]))
    table.add_row("[bold]written[/]", f"[bold]{report['written']}[/]")
    out.print(table)
    evals = Table(title="overlap with the evaluation sets (dropped)")
    for col in ("eval set", "eval prompts", "overlapping prompts"):
        evals.add_column(col, justify="left" if col == "eval set" else "right")
    for name, e in report["eval_sets"].items():
        evals.add_row(name, str(e["prompts"]), str(e["overlapping"]))
    out.print(evals)
    tp = report.get("throughput")
    if tp and tp.get("generated"):
        out.print(f"{tp['generated']} completions, {tp['new_tokens']} new tokens in {tp['seconds']} s: "
                  f"{tp['new_tokens_per_s']} new tokens/s, {tp['completions_per_s']} completions/s")
    out.print(f"report: {report_path(Path(report['out']))}")


# ---------------------------------------------------------------- reading prompt files

def parse_source(spec: str) -> tuple[Path, int]:
    """'FILE[:N]' or 'train_prompts[:N]' -> (path, N; 0 = all rows)."""
    name, limit = spec, 0
    head, _, tail = spec.rpartition(":")
    if head and tail.isdigit():
        name, limit = head, int(tail)
    path = ALIASES.get(name, Path(name))
    if not path.is_file():
        raise FileNotFoundError(f"prompt source '{name}' not found; give a JSONL/JSON file (FILE or FILE:N) "
                                f"or one of: {', '.join(ALIASES)}")
    return path, limit


def read_prompts(path: Path, kind: str = "auto") -> tuple[list[dict], BadInputReport]:
    """Conversations of any layout `prepare_data` reads; bad rows are counted in the report and skipped."""
    from specforge_het.data.sources import convert_source

    report = BadInputReport()
    rows, _ = convert_source(str(path), report, kind=kind)
    return rows, report


def user_turns(conv: dict) -> list[str]:
    return [t["content"] for t in conv["conversations"] if t["role"] == "user"]


def _evals(eval_files: Any, threshold: float) -> EvalSets:
    extra = [eval_files] if isinstance(eval_files, str) and eval_files else list(eval_files or ())
    return EvalSets(extra, threshold)


# ---------------------------------------------------------------- verbs

def mix_prompts(cfg: Config, presets: list[str], out: str, *srcs: str, seed: int = 0, shuffle: bool = True,
                append: bool = False, near_dup: float = 0.7, eval_overlap: float = 0.5,
                eval_files: tuple[str, ...] | str = (), min_chars: int = 0, max_chars: int = 0, language: str = "",
                kind: str = "auto") -> str:
    """Mix prompt files SRC[:N] (e.g. gen_prompts output, train_prompts, GSM8K train) into OUT, deduplicated.

    Args:
        srcs: files in any layout prepare_data reads, or `train_prompts` (shipped); `:N` = a seeded sample of N rows.
        seed: seed of the samples and the shuffle. shuffle: false keeps source order.
        append: the first SRC is an earlier mix: its rows are written first, unchanged and in order (so the rows a
            gen_dataset range answered stay the same), and the other sources are checked against them and appended.
        near_dup: word 3-gram containment at which a prompt is a near-duplicate of an earlier one (1 = exact only).
        eval_overlap: word 5-gram containment at which a prompt overlaps an evaluation prompt (dropped).
        eval_files: more evaluation sets (JSONL) to keep out. kind: force a source layout (see prepare_data).
        min_chars, max_chars, language: optional quality filters (off by default: the sources are curated).
    """
    if not srcs:
        raise ValueError("mix_prompts needs OUT and at least one SRC, e.g. mix_prompts mixed.jsonl prompts.jsonl "
                         "train_prompts gsm8k_train.jsonl:2000")
    filt = PromptFilter(FilterSettings(min_chars, max_chars, 0, language, 0.0, near_dup), _evals(eval_files, eval_overlap))
    used: set[str] = set()
    bad = BadInputReport()
    earlier = _keep_earlier(filt, str(srcs[0]), kind, used, bad) if append else []
    kept: list[dict] = []
    total, per_source = len(earlier), ([{"source": str(srcs[0]), "rows": len(earlier), "kept": len(earlier),
                                         "bad": bad.count}] if append else [])
    for k, spec in enumerate(srcs[1:] if append else srcs, start=int(append)):
        path, limit = parse_source(str(spec))
        rows, report = read_prompts(path, kind)
        bad.problems += report.problems
        rows = _sample(rows, limit, f"mix_prompts:{seed}:{k}")
        n_kept = len(kept)
        for row in rows:
            rid = _unique_id(row["id"], path.stem, used)
            if filt.check(rid, user_turns(row)) is None:
                used.add(rid)
                kept.append({"id": rid, "conversations": row["conversations"]})
        total += len(rows)
        per_source.append({"source": str(spec), "rows": len(rows), "kept": len(kept) - n_kept, "bad": report.count})
    if shuffle:
        random.Random(f"mix_prompts:{seed}:shuffle").shuffle(kept)
    out_path = Path(out)
    written = write_conversations(out_path, earlier + kept)
    settings = {"sources": [str(s) for s in srcs], "seed": seed, "shuffle": shuffle, "append": append}
    result = write_report(out_path, "mix_prompts", filt, total, written, settings, {"sources": per_source})
    _print_sources(per_source)
    print_report(result)
    if bad.count:
        bad.print_summary(console)
    return str(out_path)


def _keep_earlier(filt: PromptFilter, spec: str, kind: str, used: set[str], bad: BadInputReport) -> list[dict]:
    """Every row of an earlier mix, unchanged and indexed for the duplicate checks of the sources after it.

    A row that overlaps an evaluation set (one added since that mix was made) is refused, not dropped: dropping
    it would shift every later row, and with them the rows each gen_dataset range answered.
    """
    path, limit = parse_source(spec)
    if limit:
        raise ValueError(f"--append keeps every row of the earlier mix '{spec}'; drop ':{limit}' (a sample would "
                         "change which rows the data set's ranges answered)")
    rows, report = read_prompts(path, kind)
    if report.count:
        raise ValueError(f"--append: the earlier mix {path} has {report.count} unreadable row(s) (first: "
                         f"{report.problems[0].where}: {report.problems[0].reason}); keeping the rest would shift the rows after them. Fix those rows, "
                         "or make a new mix without --append")
    for row in rows:
        hit = filt.keep(row["id"], user_turns(row))
        if hit:
            raise ValueError(f"--append: row '{row['id']}' of the earlier mix {path} overlaps evaluation prompt "
                             f"{hit[0]}:{hit[1]} (score {hit[2]}); a data set answered from it must not be trained "
                             "on. Make a new mix without --append (and generate its data anew), or leave out the "
                             "evaluation file that now matches")
        used.add(row["id"])
    return [{"id": r["id"], "conversations": r["conversations"]} for r in rows]


def _sample(rows: list[dict], limit: int, key: str) -> list[dict]:
    """A seeded sample of `limit` rows in file order (all of them when `limit` is 0 or not smaller)."""
    if limit and limit < len(rows):
        pick = sorted(random.Random(key).sample(range(len(rows)), limit))
        rows = [rows[i] for i in pick]
    return rows


def _unique_id(rid: str, stem: str, used: set[str]) -> str:
    """`rid`, or `stem:rid` when an earlier source used it, or `stem:rid-2`, `-3`, ... until unused."""
    new = rid if rid not in used else f"{stem}:{rid}"
    j = 2
    while new in used:
        new, j = f"{stem}:{rid}-{j}", j + 1
    return new


def _print_sources(per_source: list[dict]) -> None:
    table = Table(title="sources")
    for col in ("source", "rows", "kept", "bad rows"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for s in per_source:
        table.add_row(escape(str(s["source"])), str(s["rows"]), str(s["kept"]), str(s["bad"]))
    console.print(table)


def eval_overlaps(rows: list[dict], evals: EvalSets | None = None) -> list[dict]:
    """Every user turn of `rows` (conversations) that overlaps an evaluation prompt:
    [{id, turn, eval_set, eval_id, score, prompt}]. Reusable on any prompt file."""
    evals = evals or EvalSets()
    hits = []
    for row in rows:
        for k, text in enumerate(user_turns(row)):
            hit = evals.match(text)
            if hit:
                hits.append({"id": row["id"], "turn": k, "eval_set": hit[0], "eval_id": hit[1], "score": hit[2],
                             "prompt": text[:200]})
    return hits


def check_prompts(cfg: Config, presets: list[str], path: str, eval_overlap: float = 0.5,
                  eval_files: tuple[str, ...] | str = (), kind: str = "auto") -> int:
    """List the prompts of PATH (any layout prepare_data reads) that overlap an evaluation set;
    PromptsOverlapError (exit status 1 from the command line) if any.

    Args:
        eval_overlap: word 5-gram containment at which a prompt overlaps an evaluation prompt (equal texts always do).
        eval_files: more evaluation sets (JSONL) besides the shipped MT-Bench and GSM8K test.
    """
    src, _ = parse_source(str(path))
    rows, report = read_prompts(src, kind)
    evals = _evals(eval_files, eval_overlap)
    hits = eval_overlaps(rows, evals)
    table = Table(title=f"check_prompts {path}: {len(rows)} prompts against the evaluation sets "
                        f"(word 5-gram containment >= {eval_overlap})")
    for col in ("eval set", "eval prompts", "overlapping prompts"):
        table.add_column(col, justify="left" if col == "eval set" else "right")
    for name in evals.names:
        table.add_row(name, str(evals.sizes[name]), str(len({h["id"] for h in hits if h["eval_set"] == name})))
    console.print(table)
    if hits:
        detail = Table(title="overlapping prompts")
        for col in ("id", "eval", "score", "prompt"):
            detail.add_column(col, overflow="fold")
        for h in hits[:50]:
            detail.add_row(escape(h["id"]), f"{h['eval_set']}:{h['eval_id']}", str(h["score"]), escape(h["prompt"][:100]))
        console.print(detail)
    if report.count:
        report.print_summary(console)
    if hits:
        raise PromptsOverlapError(f"{len({h['id'] for h in hits})} prompt(s) of {path} overlap an evaluation set")
    console.print("[green]no overlap with any evaluation set[/]")
    return 0

