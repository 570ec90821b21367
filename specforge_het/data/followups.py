"""`gen_followups`: second user turns for conversations the base already answered (multi-turn data).

Single-turn data never shows the draft an answer that refers back to an earlier answer, yet chat is
full of them ("shorter", "as a table", "explain step 2"), and there the base copies long spans of
what it wrote before. This verb makes such conversations Magpie-style: a chat model reads a
conversation of a `gen_dataset` folder (the user turn from the prompt file, the base's answer from
the folder) and writes the user's next message. The chat template is rendered over [a steering
system turn, the user turn, the answer] up to the start of the next user message, the model
completes it with sampling, and generation stops at the end-of-turn token: the same cut as
`gen_prompts` (`magpie.UserTurnTemplate`), no template-specific regex.

With `--requests shipped` (or a JSON file of them) no model writes: each conversation gets one generic request
that transforms the answer ("shorter", "as a checklist", "for a beginner": `files/followup_requests.json`, 40
written for this project), drawn with the seed. A 135M writer mostly asks a new related question whatever its
system turn says; the requests are what make the base rework its own answer.

Diversity: each conversation draws a follow-up kind (`FOLLOWUP_KINDS`) and a temperature from a
generator seeded with (seed, id). Filters: the follow-up alone passes the length, language and
repetition checks; the pair (first turn, follow-up) passes the evaluation-overlap check (each turn,
against every shipped evaluation set) and exact / near-duplicate removal.

Output: conversations JSONL whose rows hold both user turns (id `<id>~fu`). `gen_dataset` on it
has the base answer turn 1 again (its own answer) and then the follow-up. Resumable like
`gen_prompts`: completions go to OUT.raw.jsonl batch by batch and a rerun goes on from there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specforge_het.config import Config
from specforge_het.data.dedup import FILES, EvalSets, FilterSettings, PromptFilter, text_problem
from specforge_het.data.formats import read_conversations, write_conversations
from specforge_het.data.magpie import (
    append_raw,
    load_chat_model,
    read_json,
    read_raw,
    temperature_range,
    write_raw,
    write_turns,
)
from specforge_het.data.prompt_mix import console, print_report, write_report
from specforge_het.data.report import BadInputReport
from specforge_het.data.store import iter_rows, read_meta

# What the user does next; the writer's system turn names one. Kinds, not wordings: the model writes the text.
FOLLOWUP_KINDS = (
    "ask for a shorter version of the answer",
    "ask for the answer rewritten in another tone or for another reader",
    "ask for more detail on one specific point of the answer",
    "ask for a concrete example of something the answer mentions",
    "ask a related question on the same topic",
    "ask for the answer as a list, a table or numbered steps",
    "point out a possible mistake or gap and ask for a corrected answer",
    "ask the assistant to continue or extend the answer",
    "describe their own situation briefly and ask how the answer applies to it",
    "ask for the answer explained in simpler words",
    "ask to change one part of the answer and keep the rest",
    "question one claim of the answer and ask why",
)
REQUESTS_FILE = FILES / "followup_requests.json"
WRITER_SYSTEM = ("You write the next message of the user in a conversation with an AI assistant. The user has "
                 "read the assistant's answer and will now {kind}. Write only the user's message.")


def answered(dataset: str | Path, prompts: str | Path, tokenizer: Any, max_answer_tokens: int) -> list[dict]:
    """Single-turn conversations of the folder whose answer ended on its own (`finish_reason: stop`) within
    `max_answer_tokens`: [{"id", "user", "answer"}] in dataset order. The user turn comes from `prompts`
    (the file gen_dataset read), the answer is the row's last loss-masked span, decoded."""
    report = BadInputReport()
    users = {c["id"]: [m["content"] for m in c["conversations"] if m["role"] == "user"]
             for c in read_conversations(prompts, report)}
    if report.problems:  # bad lines of the prompt file are skipped, and said
        report.print_summary(console)
    out = []
    for row in sorted(iter_rows(dataset), key=lambda r: r["index"]):
        turns = users.get(row["id"])
        if row.get("finish_reason", "stop") != "stop" or not turns or len(turns) != 1:
            continue
        mask = row["loss_mask"]
        end = max((i for i, m in enumerate(mask) if m), default=-1)
        start = end
        while start > 0 and mask[start - 1]:
            start -= 1
        if end < 0 or end - start + 1 > max_answer_tokens:
            continue
        text = tokenizer.decode(row["input_ids"][start: end + 1], skip_special_tokens=True).strip()
        if text:
            out.append({"id": row["id"], "user": turns[0], "answer": text})
    if not out:
        raise ValueError(f"{dataset}: no single-turn conversation of {prompts} ended on its own within "
                         f"{max_answer_tokens} answer tokens; check that PROMPTS is the file gen_dataset read "
                         "(meta.json 'source') or raise --max_answer_tokens")
    return out


def plan(seed: int, conv_id: str, temperature: tuple[float, float]) -> dict:
    """The follow-up kind, temperature and torch seed of one conversation (same seed and id: same plan)."""
    rng = random.Random(f"gen_followups:{seed}:{conv_id}")
    return {"kind": rng.choice(FOLLOWUP_KINDS), "temperature": round(rng.uniform(*temperature), 3),
            "seed": rng.getrandbits(62)}


def load_requests(requests: str) -> list[str]:
    """Follow-up requests of --requests: 'shipped' (files/followup_requests.json) or a JSON file holding a list of
    strings or {"requests": [...]}."""
    path = REQUESTS_FILE if requests == "shipped" else Path(requests)
    data = read_json(path, "requests file", "use --requests shipped or a JSON list of strings")
    texts = data.get("requests") if isinstance(data, dict) else data
    if not (isinstance(texts, list) and texts and all(isinstance(t, str) and t.strip() for t in texts)):
        raise ValueError(f"requests file {path}: expected a non-empty list of strings, or {{'requests': [...]}}")
    return texts


def gen_followups(cfg: Config, presets: list[str], out: str, dataset: str, prompts: str = "", n: int = 500,
                  seed: int = 0, batch_size: int = 32, max_new_tokens: int = 96, max_answer_tokens: int = 512,
                  temperature: tuple[float, float] | float = (0.6, 1.0), top_p: float = 0.95, requests: str = "",
                  min_chars: int = 10, max_chars: int = 600, min_words: int = 3, language: str = "en",
                  min_unique: float = 0.25, near_dup: float = 0.7, eval_overlap: float = 0.5,
                  eval_files: tuple[str, ...] | str = (), dtype: str = "auto") -> str:
    """A chat model (--@smollm2 or --modeling.base_model) writes a second user turn for up to N answered
    conversations of the gen_dataset folder DATASET; writes OUT (conversations JSONL, both user turns).

    Args:
        out: output JSONL; also OUT.raw.jsonl (every follow-up, for resuming) and OUT.report.json.
        dataset: a gen_dataset folder. prompts: the prompt file it was made from (default: its meta.json 'source').
        n: conversations to extend. seed: seed of every draw. batch_size: rows decoded together.
        max_new_tokens: cap of a follow-up (no end of turn: dropped).
        max_answer_tokens: skip conversations whose first answer is longer (both answers must fit max_length).
        temperature: 'lo,hi' (one draw per conversation) or one value. top_p: nucleus mass.
        requests: '' (the model writes each follow-up), or 'shipped' / a JSON file of generic requests
            ('shorter', 'as a list', ...): each conversation gets one, drawn with the seed; no weights are loaded.
        min_chars, max_chars, min_words, language, min_unique: quality checks of the follow-up.
        near_dup: word 3-gram containment of (turn 1, follow-up) at which a pair is a near-duplicate.
        eval_overlap: word 5-gram containment at which a turn overlaps an evaluation prompt; eval_files: more sets.
        dtype: auto (bfloat16 where the device computes it fast), float32, bfloat16.
    """
    temps = temperature_range(temperature)
    if n < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("--n, --batch_size and --max_new_tokens must be at least 1")
    source = read_meta(dataset).get("source", "")  # first: a folder that is not a gen_dataset output is named as such
    prompts = prompts or source
    if not prompts or not Path(prompts).is_file():
        raise FileNotFoundError(f"prompt file '{prompts}' of {dataset} not found; pass --prompts FILE "
                                "(the conversations JSONL gen_dataset read)")
    extra = [eval_files] if isinstance(eval_files, str) and eval_files else list(eval_files or ())
    filt = PromptFilter(FilterSettings(0, 0, 0, "", 0.0, near_dup), EvalSets(extra, eval_overlap))
    texts = load_requests(requests) if requests else []
    model, tokenizer, turn = (None, _tokenizer(cfg), None) if texts else load_chat_model(cfg, dtype)
    meta = {"model": cfg.modeling.base_model, "dtype": str(model.dtype).removeprefix("torch.") if model else "",
            "seed": seed, "batch_size": batch_size, "max_new_tokens": max_new_tokens, "temperature": list(temps),
            "top_p": top_p, "dataset": str(dataset), "max_answer_tokens": max_answer_tokens,
            "system_turn": bool(turn and turn.system), **({"requests": requests} if requests else {})}
    writer = _Writer(model, turn, texts, seed, temps, max_new_tokens, top_p, batch_size,
                     tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (turn.stop_ids[0] if turn else 0))
    kept, stats, eligible = _run(writer, answered(dataset, prompts, tokenizer, max_answer_tokens), Path(out), meta,
                                 filt, (min_chars, max_chars, min_words, language, min_unique), n)
    return _write_output(Path(out), kept, filt, meta, stats, n, eligible)


def _tokenizer(cfg: Config) -> Any:
    from transformers import AutoTokenizer

    from specforge_het.assets import resolve_model_path

    if not cfg.modeling.base_model:
        raise ValueError("no model: give the base with a preset (--@smollm2) or --modeling.base_model PATH")
    return AutoTokenizer.from_pretrained(resolve_model_path(cfg.modeling.base_model))


def _run(writer: _Writer, convs: list[dict], out_path: Path, meta: dict, filt: PromptFilter, quality: tuple,
         n: int) -> tuple[list[dict], dict, int]:
    """Follow-ups for `convs` in calls of 4 x batch_size, each appended to OUT.raw.jsonl, until n are kept."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    raw = out_path.with_name(out_path.stem + ".raw.jsonl")
    rows = read_raw(raw, meta)
    write_raw(raw, meta, rows)  # drops a torn last batch
    kept: list[dict] = []
    stats = {"resumed": len(rows), "examined": 0, "new_tokens": 0, "seconds": 0.0}
    _take(rows, filt, quality, kept, n, stats)
    index = len(rows)
    while len(kept) < n and index < len(convs):
        batch = writer.write(convs[index: index + 4 * writer.batch_size], index, stats)
        append_raw(raw, batch)
        _take(batch, filt, quality, kept, n, stats)
        index += len(batch)
        rate = f" ({stats['new_tokens'] / stats['seconds']:.0f} new tokens/s)" if stats["seconds"] else ""
        console.print(f"gen_followups: {index} of {len(convs)} conversations read, {len(kept)}/{n} kept{rate}")
    return kept, stats, len(convs)


def _write_output(out_path: Path, kept: list[dict], filt: PromptFilter, meta: dict, stats: dict, n: int,
                  eligible: int) -> str:
    written = write_conversations(out_path, [{"id": f"{r['id']}~fu", "conversations": [
        {"role": "user", "content": r["user"]}, {"role": "user", "content": r["text"]}]} for r in kept])
    kinds: dict[str, int] = {}
    for r in kept:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    report = write_report(out_path, "gen_followups", filt, total=int(stats["examined"]), written=written,
                          settings=meta, extra={"n": n, "eligible": eligible, "throughput": stats, "kinds": kinds})
    print_report(report)
    if written < n:
        console.print(f"[yellow]warning:[/] kept {written} of {n} follow-ups from {eligible} eligible conversations; "
                      "answer more prompts, raise --max_answer_tokens or loosen the filters")
    return str(out_path)


@dataclass
class _Writer:
    """Who writes the follow-ups: the chat model (Magpie-style), or a draw from generic requests (`texts`)."""

    model: Any
    turn: Any
    texts: list[str]
    seed: int
    temps: tuple[float, float]
    max_new_tokens: int
    top_p: float
    batch_size: int
    pad: int

    def write(self, convs: list[dict], start: int, stats: dict) -> list[dict]:
        """Raw rows {index, id, user, kind, temperature, seed, text, finish, new_tokens} of one call over `convs`."""
        plans = [{"index": start + i, "id": c["id"], "user": c["user"], **plan(self.seed, c["id"], self.temps)}
                 for i, c in enumerate(convs)]
        if self.texts:
            return [{**p, "kind": "request", "text": random.Random(f"requests:{p['seed']}").choice(self.texts),
                     "finish": "stop", "new_tokens": 0} for p in plans]
        heads = [[{"role": "system", "content": WRITER_SYSTEM.format(kind=p["kind"])}] * bool(self.turn.system)
                 + [{"role": "user", "content": c["user"]}, {"role": "assistant", "content": c["answer"]}]
                 for p, c in zip(plans, convs)]
        return write_turns(self.model, self.turn, [self.turn.prefix_after(h) for h in heads], plans,
                           self.max_new_tokens, self.top_p, self.batch_size, self.pad, stats)


def _take(rows: list[dict], filt: PromptFilter, quality: tuple, kept: list[dict], n: int, stats: dict) -> None:
    """Pass raw rows through the filters into `kept` (at most n)."""
    for row in rows:
        if len(kept) >= n:
            return
        stats["examined"] += 1
        if row["finish"] != "stop":
            filt.drop("no end of turn" if row["finish"] == "length" else "other special token", row["text"])
            continue
        problem = text_problem(row["text"], *quality)
        if problem:
            filt.drop(problem, row["text"])
        elif filt.check(f"{row['id']}~fu", [row["user"], row["text"]]) is None:
            kept.append(row)
