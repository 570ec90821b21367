"""Prompt sources for the decoder (MT-Bench, prompt JSONL, a single prompt).

`render` (a conversation -> prompt ids) is specforge_het.chat's, re-exported here for the decoder and the bench.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from specforge_het.chat import render as render  # the one chat renderer, shared with the data pipeline

SHIPPED_MTBENCH = Path(__file__).resolve().parent.parent / "data" / "files" / "mt_bench_questions.jsonl"


@dataclass
class Conversation:
    id: str
    turns: list[str]  # user turns; turn k is asked after the model's own answer to turn k-1


def split_count(spec: str) -> tuple[str, int | None]:
    """'file.jsonl:3' -> ('file.jsonl', 3); 'file.jsonl' -> ('file.jsonl', None)."""
    path, sep, count = spec.rpartition(":")
    if sep and count.isdigit():
        return path, int(count)
    return spec, None


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"prompt file '{path}' not found")
    rows = []
    # split on "\n" only: str.splitlines() would also break on U+2028 inside JSON strings
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}). Fix or remove that line.") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object per line")
        rows.append((lineno, row))
    return rows


def _user_turns(messages) -> list[str]:
    """The user messages of a data_gen-style `conversations` list ([] when it is not one)."""
    if not isinstance(messages, list):
        return []
    return [m["content"] for m in messages if isinstance(m, dict) and m.get("role") == "user"
            and isinstance(m.get("content"), str)]


def load_conversations(spec: str) -> list[Conversation]:
    """MT-Bench `question.jsonl` (`turns`) or any JSONL with `turns`, `prompt`, `question` or `text`, or a
    data_gen prompt file (`conversations`: role/content messages; the user turns are asked in order).

    `spec` is 'FILE' or 'FILE:N' (the first N rows); 'mtbench' names the shipped MT-Bench file.
    """
    path_s, count = split_count(spec)
    path = SHIPPED_MTBENCH if path_s in ("", "mtbench") else Path(path_s)
    out: list[Conversation] = []
    for lineno, row in _read_jsonl(path):
        rid = str(row.get("question_id", row.get("id", len(out))))
        listed = row.get("turns")
        if isinstance(listed, list) and listed and all(isinstance(t, str) for t in listed):
            turns = listed
        else:
            turns = _user_turns(row.get("conversations"))
        if not turns:
            key = next((k for k in ("prompt", "question", "text") if isinstance(row.get(k), str)), None)
            if key is None:
                raise ValueError(f"{path}:{lineno}: no prompt found; give 'turns' (list of str), "
                                 "'conversations' (role/content messages), 'prompt', 'question' or 'text'.")
            turns = [row[key]]
        out.append(Conversation(rid, turns))
        if count is not None and len(out) >= count:
            break
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out
