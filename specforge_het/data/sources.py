"""`prepare_data`: convert a prompt or chat source to the conversations schema (see formats.py).

Layouts, detected per row (or forced with `kind`):

| kind          | row                                                                 | example               |
|---------------|---------------------------------------------------------------------|-----------------------|
| `sharegpt`    | `conversations`/`items`: [{from: human/gpt/system, value}]          | ShareGPT, FastChat    |
| `messages`    | `messages`/`conversations`: [{role, content}]                      | OpenAI-style chats    |
| `turns`       | `turns`: [str, ...] (user turns only)                               | MT-Bench              |
| `question`    | `question` (+ `answer`)                                             | GSM8K                 |
| `prompt`      | `prompt` (+ `uid`)                                                  | arena-hard            |
| `instruction` | `instruction` (+ `input` or `instances[0].input`, `output`)         | self-instruct, Alpaca |

A source is a JSONL file, a `.json` file holding a list, or a `datasets` Hub id (when the Hub is
reachable). Reference answers of single-prompt sources are dropped unless `keep_answers`: a draft
learns from the BASE model's own answers, which `gen_dataset` writes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from specforge_het.config import Config
from specforge_het.data.formats import conversation_problem, write_conversations
from specforge_het.data.report import BadInputError, BadInputReport

KINDS = ("auto", "sharegpt", "messages", "turns", "question", "prompt", "instruction")
ID_KEYS = ("id", "question_id", "uid")
ROLE_ALIASES = {
    "system": "system", "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant", "bard": "assistant",
}


class RowError(ValueError):
    """A row that cannot be converted; the message is the reason reported for it."""


# ---------------------------------------------------------------- reading sources

def _json_list(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """Items of a JSON list with the line each starts on."""
    decoder, pos, line, counted = json.JSONDecoder(), text.index("[") + 1, 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); a .json list cannot be read past "
                             "this point: fix the file or convert it to JSONL (one object per line)") from None
        line += text.count("\n", counted, pos)
        counted = pos
        yield line, item
        pos = end


def read_source(src: str, split: str = "train", subset: str = "") -> Iterator[tuple[int, Any]]:
    """(line, row) of a local JSONL / JSON-list file, or (row number, row) of a Hub dataset.
    A malformed JSONL line is yielded as (line, RowError)."""
    path = Path(src)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            yield from _json_list(path, text)
            return
        # split on "\n" only: str.splitlines() would also split on U+2028 etc. inside JSON strings
        for lineno, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    yield lineno, RowError(f"malformed JSON: {e.msg}")
        return
    if path.suffix in (".json", ".jsonl") or path.exists() or src.startswith((".", "/", "~")):
        raise FileNotFoundError(f"source file '{src}' not found (or not a file); give a .jsonl or .json file")
    yield from enumerate(_load_hub(src, split, subset), start=1)


def _load_hub(src: str, split: str, subset: str) -> Any:
    try:
        import datasets

        return datasets.load_dataset(src, subset or None, split=split)
    except Exception as e:  # offline, unknown id, missing split: all end the same way for the user
        raise ConnectionError(
            f"'{src}' is not a local file, and loading it from the Hugging Face Hub failed "
            f"({type(e).__name__}: {str(e)[:200]}). The Hub is unreachable from here or has no such dataset/split: "
            "pass a local .jsonl/.json file instead (or check the id, --subset and --split)."
        ) from None


# ---------------------------------------------------------------- converting rows

def detect_kind(row: dict) -> str:
    for key in ("conversations", "items", "messages"):
        turns = row.get(key)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            return "sharegpt" if "from" in turns[0] else "messages"
        if isinstance(turns, list) and not turns:
            raise RowError("empty conversation")
    for kind, key in (("turns", "turns"), ("question", "question"), ("prompt", "prompt"), ("instruction", "instruction")):
        if key in row:
            return kind
    raise RowError(f"unrecognised row: no conversations, messages, turns, question, prompt or instruction "
                   f"(keys: {', '.join(sorted(row))[:80]})")


def _turn(role: Any, content: Any, i: int) -> dict[str, str]:
    if role not in ROLE_ALIASES:
        raise RowError(f"unknown role: {role!r} in turn {i} (expected one of {', '.join(ROLE_ALIASES)})")
    if not isinstance(content, str):
        raise RowError(f"content is not a string: turn {i}")
    return {"role": ROLE_ALIASES[role], "content": content}


def _chat(row: dict, keys: tuple[str, ...], role_key: str, content_key: str) -> list[dict[str, str]]:
    items = next((row[k] for k in keys if isinstance(row.get(k), list)), None)
    if items is None:
        raise RowError(f"missing conversations: expected a list under {' or '.join(keys)}")
    if not all(isinstance(t, dict) for t in items):
        raise RowError("turn is not an object")
    turns = [_turn(t.get(role_key), t.get(content_key), i) for i, t in enumerate(items)]
    system = row.get("system")
    if isinstance(system, str) and system.strip() and not (turns and turns[0]["role"] == "system"):
        turns.insert(0, {"role": "system", "content": system})
    return turns


def _text(row: dict, key: str) -> str:
    if not isinstance(row.get(key), str):
        raise RowError(f"{key} is not a string")
    return row[key]


def _single(prompt: str, answer: Any, keep_answers: bool) -> list[dict[str, str]]:
    turns = [{"role": "user", "content": prompt}]
    if keep_answers and isinstance(answer, str) and answer.strip():
        turns.append({"role": "assistant", "content": answer})
    return turns


def _instruction(row: dict, keep_answers: bool) -> list[dict[str, str]]:
    first = row["instances"][0] if isinstance(row.get("instances"), list) and row["instances"] else {}
    first = first if isinstance(first, dict) else {}
    extra = row.get("input", first.get("input", ""))
    prompt = _text(row, "instruction")
    if isinstance(extra, str) and extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    return _single(prompt, row.get("output", first.get("output")), keep_answers)


def _turns(row: dict) -> list[dict[str, str]]:
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns:
        raise RowError("empty conversation" if turns == [] else "turns is not a list")
    texts = [t.get("content") if isinstance(t, dict) else t for t in turns]  # arena-hard v1: [{content}]
    return [_turn("user", t, i) for i, t in enumerate(texts)]


def convert_row(row: Any, kind: str = "auto", keep_answers: bool = False) -> tuple[str, list[dict[str, str]]]:
    """(kind used, conversation turns) of one source row; raises RowError with the reason."""
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, dict):
        raise RowError("not a JSON object")
    kind = detect_kind(row) if kind == "auto" else kind
    if kind == "sharegpt":
        return kind, _chat(row, ("conversations", "items"), "from", "value")
    if kind == "messages":
        return kind, _chat(row, ("messages", "conversations"), "role", "content")
    if kind == "turns":
        return kind, _turns(row)
    if kind == "question":
        return kind, _single(_text(row, "question"), row.get("answer"), keep_answers)
    if kind == "prompt":
        return kind, _single(_text(row, "prompt"), row.get("answer"), keep_answers)
    return kind, _instruction(row, keep_answers)


def row_id(row: dict, stem: str, index: int) -> str:
    """The source's own id (id, question_id or uid) when present, else '<stem>-<row index>'."""
    for key in ID_KEYS:
        value = row.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value)
    return f"{stem}-{index}"


# ---------------------------------------------------------------- the verb

def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown source kind '{kind}'; use one of {', '.join(KINDS)}")


def convert_source(src: str, report: BadInputReport, kind: str = "auto", keep_answers: bool = False,
                   split: str = "train", subset: str = "", limit: int = 0,
                   max_prompt_chars: int = 0) -> tuple[list[dict], Counter]:
    """Converted conversations of `src` and counts (`rows read`, per kind, `filtered`); bad rows go to `report`."""
    _check_kind(kind)
    local = Path(src).is_file()
    label, stem = (src, Path(src).stem) if local else (f"hub:{src}", src.rstrip("/").split("/")[-1])
    rows, seen = [], set()
    counts: Counter[str] = Counter()
    for index, (line, row) in enumerate(read_source(src, split, subset)):
        counts["rows read"] += 1
        try:
            used, turns = convert_row(row, kind, keep_answers)
            conv = {"id": row_id(row, stem, index), "conversations": turns}
            problem = conversation_problem(conv) or (f"duplicate id: {conv['id']}" if conv["id"] in seen else None)
            if problem:
                raise RowError(problem)
        except RowError as e:
            report.add(label, line, str(e))
            continue
        if max_prompt_chars and max(len(t["content"]) for t in turns if t["role"] == "user") > max_prompt_chars:
            counts["filtered"] += 1
            continue
        seen.add(conv["id"])
        rows.append(conv)
        counts[f"kind {used}"] += 1
        if limit and len(rows) >= limit:
            break
    return rows, counts


def prepare_data(cfg: Config, presets: list[str], src: str, out: str, kind: str = "auto", keep_answers: bool = False,
                 split: str = "train", subset: str = "", limit: int = 0, max_prompt_chars: int = 0,
                 console: Console | None = None) -> None:
    """Convert SRC (JSONL, .json list or Hub id) to the conversations schema in OUT (JSONL, written atomically).

    Args:
        src: source file, or a `datasets` Hub id when the Hub is reachable.
        out: output JSONL; written once at the end (temp file + rename).
        kind: auto (per row) or one of sharegpt, messages, turns, question, prompt, instruction.
        keep_answers: keep reference answers (GSM8K `answer`, self-instruct `output`) as assistant turns.
        split: Hub split. subset: Hub config name (e.g. `main` for openai/gsm8k).
        limit: stop after this many converted rows (0 = all).
        max_prompt_chars: skip (count as filtered) conversations with a user turn longer than this (0 = no cap).
    """
    console = console or Console(stderr=True)
    report = BadInputReport(strict=cfg.dataset_generation.strict)
    try:
        rows, counts = convert_source(src, report, kind, keep_answers, split, subset, limit, max_prompt_chars)
    except BadInputError as e:
        raise BadInputError(f"{e} Nothing was written to {out}.") from None
    written = write_conversations(out, rows)
    table = Table(title=f"prepare_data {src} -> {out}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, n in sorted(counts.items()):
        table.add_row(key, str(n))
    table.add_row("skipped (bad input)", str(report.count))
    table.add_row("[bold]rows written[/]", f"[bold]{written}[/]")
    console.print(table)
    if report.count:
        report.print_summary(console)
