"""The conversations schema, and tokenisation with a loss mask on the assistant's tokens.

Schema, one JSON line per conversation:

    {"id": "gsm8k_train-0", "conversations": [{"role": "system"|"user"|"assistant", "content": "..."}]}

`tokenize_conversation` renders a conversation with the base tokenizer's chat template (or,
without one, the plain `User:/Assistant:` layout the decoder uses) and marks with 1 exactly the
assistant's tokens plus the end-of-turn token the template writes after them (`<|im_end|>`,
`<|eot_id|>`, `<end_of_turn>`…): the base produced those, so the draft must learn to propose them.
Spans are found by rendering prefixes of the conversation and comparing token prefixes; a
template that is not prefix-stable (Qwen3 rewrites earlier assistant turns) falls back to
character offsets of the rendered text. No template-specific regex anywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from specforge_het.chat import ROLES, Messages, render_text, uses_template, with_system
from specforge_het.chat import encode as _encode
from specforge_het.data.report import BadInputReport


class TooLongError(ValueError):
    """A conversation longer than max_length tokens; callers report it and skip it."""


# ---------------------------------------------------------------- schema: read, check, write

def conversation_problem(row: Any) -> str | None:
    """Why `row` is not a valid conversation of our schema, or None when it is."""
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("id"), str) or not row["id"]:
        return "missing id: give every conversation a non-empty string 'id'"
    turns = row.get("conversations")
    if not isinstance(turns, list):
        return "missing conversations: expected a list of {role, content}"
    if not turns:
        return "empty conversation"
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return f"turn is not an object: turn {i}"
        if turn.get("role") not in ROLES:
            return f"unknown role: {turn.get('role')!r} in turn {i} (expected one of {', '.join(ROLES)})"
        if not isinstance(turn.get("content"), str):
            return f"content is not a string: turn {i}"
        if not turn["content"].strip():
            return f"empty content: turn {i}"
    if not any(t["role"] == "user" for t in turns):
        return "no user turn"
    return None


def read_conversations(path: str | Path, report: BadInputReport) -> list[dict]:
    """Conversations of a schema JSONL; bad lines and duplicate ids go to `report` and are skipped."""
    return [row for _, row in read_conversations_with_lines(path, report)]


def read_conversations_with_lines(path: str | Path, report: BadInputReport) -> list[tuple[int, dict]]:
    """(line, conversation) of every valid line, for file:line in later reports (e.g. too long)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conversations file '{path}' not found; make one with `prepare_data SRC OUT`")
    rows, seen = [], set()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                report.add(str(path), lineno, f"malformed JSON: {e.msg}")
                continue
            problem = conversation_problem(row)
            if problem is None and row["id"] in seen:
                problem = f"duplicate id: {row['id']}"
            if problem:
                report.add(str(path), lineno, problem)
                continue
            seen.add(row["id"])
            rows.append((lineno, {"id": row["id"], "conversations": row["conversations"]}))
    return rows


def _dumps(obj: Any) -> str:
    """JSON with UTF-8 kept, but with the characters str.splitlines() breaks on escaped, so every
    JSONL reader sees one row per line."""
    text = json.dumps(obj, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")


def write_conversations(path: str | Path, rows: Iterable[dict]) -> int:
    """Write schema JSONL atomically (temp file + rename): readers never see half a file. Returns rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(_dumps({"id": row["id"], "conversations": row["conversations"]}) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


# ---------------------------------------------------------------- assistant spans

def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def _span_by_tokens(ids: list[int], before: list[int], after: list[int], special: set[int]) -> tuple[int, int] | None:
    """Token span of one assistant turn when both prefixes tokenise as prefixes of the whole; else None.

    The turn's tokens run from the end of `before` (the generation prompt) to the end of `after`;
    the span stops after the last special token in it (the end-of-turn token), so trailing
    newlines the template adds between turns stay unmasked.
    """
    b, a = len(before), len(after)
    if a < b or ids[:b] != before or ids[:a] != after:
        return None
    ends = [i for i in range(b, a) if ids[i] in special]
    return b, (ends[-1] + 1 if ends else a)


def _locate(text: str, content: str, start: int) -> tuple[int, int]:
    for needle in (content, content.strip()):
        i = text.find(needle, start)
        if i >= 0:
            return i, i + len(needle)
    raise ValueError("the chat template rewrites the assistant's content, so its loss mask cannot be found; "
                     "use a template that writes the content verbatim or pass --inference.chat_template false")


def _span_by_offsets(full: str, offsets: list[tuple[int, int]], ids: list[int], special: set[int],
                     texts: tuple[str, str, str], cursor: int) -> tuple[int, int]:
    """Token span of one assistant turn from character offsets (templates that are not prefix-stable).

    texts = (rendered prefix with generation prompt, rendered prefix ending with this turn, content).
    """
    before, after, content = texts
    start = len(before) if full.startswith(before) and len(before) >= cursor else None
    c0, c1 = _locate(full, content, cursor if start is None else start)
    start = c0 if start is None else start
    turn_end = len(after) if full.startswith(after) and len(after) >= c1 else c1
    inside = [i for i, (s, e) in enumerate(offsets) if e > s and s < c1 and e > start]
    if not inside:
        return 0, 0
    first, last = inside[0], inside[-1] + 1
    if last < len(ids) and ids[last] in special:
        return first, last + 1  # the end-of-turn token right after the content
    while last < len(ids) and offsets[last][0] < turn_end and offsets[last][1] > offsets[last][0]:
        last += 1  # no end-of-turn token: the rest of the turn (the plain layout's newline)
    return first, last


def assistant_spans(tokenizer: Any, messages: Messages, ids: list[int], template: bool) -> list[tuple[int, int]]:
    """Token spans [start, end) of every assistant turn of `messages` (already rendered into `ids`)."""
    special = _special_ids(tokenizer)
    full, enc = "", None
    spans: list[tuple[int, int]] = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_text(tokenizer, messages[:k], True, template)
        after = render_text(tokenizer, messages[: k + 1], False, template)
        span = _span_by_tokens(ids, _encode(tokenizer, before, template).input_ids,
                               _encode(tokenizer, after, template).input_ids, special)
        if span is None:
            if enc is None:
                full = render_text(tokenizer, messages, False, template)
                enc = _offsets(tokenizer, full, template)
            cursor = enc.offset_mapping[spans[-1][1] - 1][1] if spans and spans[-1][1] else 0
            span = _span_by_offsets(full, enc.offset_mapping, ids, special, (before, after, m["content"]), cursor)
        spans.append(span)
    return spans


def _offsets(tokenizer: Any, full: str, template: bool) -> Any:
    try:
        return _encode(tokenizer, full, template, offsets=True)
    except NotImplementedError:
        raise ValueError(f"the chat template of {getattr(tokenizer, 'name_or_path', 'this tokenizer')} is not "
                         "prefix-stable and the tokenizer gives no offsets (not a fast tokenizer); "
                         "load a fast tokenizer (tokenizer.json) to build loss masks") from None


def tokenize_conversation(tokenizer: Any, messages: Messages, max_length: int | None,
                          system_prompt: str = "", use_template: bool = True) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) of a conversation; loss_mask is 1 exactly on the assistant's tokens
    and the end-of-turn token after each, 0 on system, user and role headers.

    `system_prompt` is prepended unless the conversation opens with a system turn. Raises
    TooLongError when the conversation has more than `max_length` tokens (None or 0: no limit),
    ValueError when the chat template refuses it.
    """
    template = uses_template(tokenizer, use_template)
    messages = with_system(messages, system_prompt)
    ids = list(_encode(tokenizer, render_text(tokenizer, messages, False, template), template).input_ids)
    if max_length and len(ids) > max_length:
        raise TooLongError(f"too long: {len(ids)} tokens, more than max_length {max_length} "
                           "(raise --dataset.max_length / --dataset_generation.max_length, or shorten it)")
    mask = [0] * len(ids)
    for start, end in assistant_spans(tokenizer, messages, ids, template):
        mask[start:end] = [1] * (end - start)
    return ids, mask
