"""`gen_prompts`: training prompts without a data set, Magpie-style.

A chat model writes its own user turns. The chat template is rendered up to the start of a user
message (a system turn, then the template's user header), the model completes it with sampling,
and generation stops at the template's end-of-turn token. The header and the end-of-turn token
are found by rendering a conversation with a sentinel user content and cutting at the sentinel:
no template-specific regex.

Diversity: the system prompt of prompt i is a persona plus a request kind with a topic
(`files/magpie_seeds.json`: 30 personas, 12 categories from chat to roleplay, ~200 topics),
categories round-robin; persona, kind, topic and temperature are drawn from a generator seeded
with (seed, i). Then the filter chain of `dedup.PromptFilter`: length, language, repetition,
overlap with every shipped evaluation set, exact and near duplicates.

Resumable and deterministic: raw completions are appended batch by batch to OUT.raw.jsonl
(first line: the settings that shape them); a rerun replays them through the filters and goes
on from the next batch. OUT is written at the end (temp file + rename), OUT.report.json beside it.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specforge_het.chat import end_ids
from specforge_het.config import Config
from specforge_het.data.completions import complete
from specforge_het.data.dedup import FILES, EvalSets, FilterSettings, PromptFilter
from specforge_het.data.formats import write_conversations
from specforge_het.data.prompt_mix import console, print_report, write_report

SEEDS_FILE = FILES / "magpie_seeds.json"
SENTINEL_USER = "QZXUSERSENTINELQZX"
SENTINEL_SYSTEM = "QZXSYSTEMSENTINELQZX"
NO_TEMPLATE = ("'{model}' has no chat template, so it cannot write user turns: gen_prompts needs a chat model. "
               "Generate prompts with a chat model and reuse them for this base, e.g.\n"
               "  python -m specforge_het.data_gen gen_prompts prompts.jsonl --@smollm2 --n 2000\n"
               "  python -m specforge_het.data_gen mix_prompts mixed.jsonl prompts.jsonl train_prompts GSM8K_TRAIN.jsonl:2000\n"
               "then `gen_dataset mixed.jsonl` with this base.")


# ---------------------------------------------------------------- the template cut

class UserTurnTemplate:
    """Where a user turn starts and ends in a tokenizer's chat template.

    `prefix(system)` is the rendered text up to the first character of the user's content;
    `stop_ids` the token ids that end the turn (the first special token the template writes after
    the user content, the eos ids, and every other special token: none belongs inside a user turn).
    `system` is False when the template has no separate system turn (it refuses one, or folds it
    into the user turn): then prompts get no system prompt and no topic steering.
    """

    def __init__(self, tokenizer: Any, model_name: str = "", extra_eos: tuple[int, ...] = ()) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(NO_TEMPLATE.format(model=model_name or getattr(tokenizer, "name_or_path", "this model")))
        self.tokenizer = tokenizer
        self.system = True
        try:
            text = self._render([{"role": "system", "content": SENTINEL_SYSTEM}])
            between = text[text.index(SENTINEL_SYSTEM) + len(SENTINEL_SYSTEM): text.index(SENTINEL_USER)]
            self.system = text.index(SENTINEL_SYSTEM) < text.index(SENTINEL_USER) and bool(self._specials_in(between))
        except (ValueError, KeyError):  # the template refuses a system turn
            self.system = False
        text = self._render([{"role": "system", "content": SENTINEL_SYSTEM}] if self.system else [])
        cut = text.index(SENTINEL_USER)
        self._head = text[:cut]
        after = text[cut + len(SENTINEL_USER):]
        ends = self._specials_in(after)
        self.end_of_turn = ends[0] if ends else None
        self.end_text = "" if ends else after.strip()  # a template that ends turns in plain text
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        eos = end_ids(tokenizer) | set(extra_eos)
        self.stop_ids = sorted(special | eos | set(ends[:1]))
        self.end_ids = sorted(eos | set(ends[:1]))

    def _render(self, head: list[dict]) -> str:
        msgs = [*head, {"role": "user", "content": SENTINEL_USER}]
        try:
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        except Exception as e:  # jinja raise_exception(): the template refuses this layout
            raise ValueError(f"chat template refused {[m['role'] for m in msgs]}: {e}") from None
        if SENTINEL_USER not in text:
            raise ValueError("the chat template does not write the user's content verbatim, so the start of a user "
                             "turn cannot be found; use a chat model whose template copies message content")
        return text

    def _specials_in(self, text: str) -> list[int]:
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        return [i for i in self.tokenizer(text, add_special_tokens=False)["input_ids"] if i in special]

    def prefix(self, system: str) -> str:
        return self._head.replace(SENTINEL_SYSTEM, system) if self.system else self._head

    def prefix_ids(self, system: str) -> list[int]:
        return self.tokenizer(self.prefix(system), add_special_tokens=False)["input_ids"]

    def prefix_after(self, head: list[dict]) -> list[int]:
        """Token ids of the messages `head` rendered up to the first character of the next user turn's content."""
        text = self._render(head)
        return self.tokenizer(text[: text.index(SENTINEL_USER)], add_special_tokens=False)["input_ids"]

    def finish(self, ids: list[int]) -> tuple[str, str]:
        """(user text, finish reason) of generated ids: 'stop' at an end-of-turn token, 'special' at
        another special token, 'length' when none came."""
        cut = next((j for j, t in enumerate(ids) if t in self.stop_ids), None)
        text = self.tokenizer.decode(ids[:cut], skip_special_tokens=True)
        if self.end_text and self.end_text in text:
            return text[: text.index(self.end_text)].strip(), "stop"
        if cut is None:
            return text.strip(), "length"
        return text.strip(), "stop" if ids[cut] in self.end_ids else "special"


# ---------------------------------------------------------------- plans: what prompt i asks for

def read_json(path: Path, what: str, fix: str) -> Any:
    """The JSON in `path`; a missing file or invalid JSON is an error naming `what` (and `fix` when missing)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def load_seeds(path: str | Path = "") -> dict:
    """Personas and categories {name: {asks: [... {topic} ...], topics: [...]}} (the shipped file by default)."""
    path = Path(path) if path else SEEDS_FILE
    data = read_json(path, "seeds file", f"omit --seeds to use the shipped {SEEDS_FILE.name}")
    cats = data.get("categories") if isinstance(data, dict) else None
    fix = f"seeds file {path}: expected {{'personas': [str], 'categories': {{name: {{'asks': [str with {{topic}}], 'topics': [str]}}}}}}"
    if not (isinstance(data.get("personas"), list) and data["personas"] and isinstance(cats, dict) and cats):
        raise ValueError(f"{fix}; personas or categories missing or empty")
    for name, cat in cats.items():
        ok = isinstance(cat, dict) and all(isinstance(cat.get(k), list) and cat[k] for k in ("asks", "topics"))
        if not ok or not all("{topic}" in a for a in cat["asks"]):
            raise ValueError(f"{fix}; category '{name}' needs non-empty asks (each with {{topic}}) and topics")
    return data


def plan(seeds: dict, seed: int, index: int, temperature: tuple[float, float], open_share: float) -> dict:
    """What prompt `index` asks for: category (round-robin), system prompt, temperature, torch seed."""
    rng = random.Random(f"gen_prompts:{seed}:{index}")  # str seeds hash with sha512: the same on every run
    names = sorted(seeds["categories"])
    category = names[(index + seed) % len(names)]
    cat = seeds["categories"][category]
    persona, ask, topic = rng.choice(seeds["personas"]), rng.choice(cat["asks"]), rng.choice(cat["topics"])
    is_open = rng.random() < open_share
    return {"index": index, "category": "open" if is_open else category, "topic": "" if is_open else topic,
            "system": persona if is_open else f"{persona} {ask.replace('{topic}', topic)}",
            "temperature": round(rng.uniform(*temperature), 3), "seed": rng.getrandbits(62)}


# ---------------------------------------------------------------- resumable raw file

def read_raw(raw: Path, meta: dict) -> list[dict]:
    """Completions of an earlier run with the same settings, whole batches only (a torn batch is redone,
    so the result equals an uninterrupted run)."""
    if not raw.is_file():
        return []
    lines = raw.read_text(encoding="utf-8").split("\n")
    try:
        old = json.loads(lines[0])["meta"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{raw} is not a raw file of gen_prompts / gen_followups; delete it or choose another OUT") from None
    diff = [k for k in sorted(set(meta) | set(old)) if meta.get(k) != old.get(k)]
    if diff:
        k = diff[0]
        raise ValueError(f"{raw} was made with other settings ({k}: {old.get(k)!r}, now {meta.get(k)!r}); "
                         "rerun with the same settings to resume, or delete it / choose another OUT to start anew")
    rows: list[dict] = []
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a batch cut short by a kill
        if not isinstance(row, dict) or row.get("index") != len(rows):
            break
        rows.append(row)
    return rows[: len(rows) - len(rows) % (4 * meta["batch_size"])]  # whole calls: a call decodes its rows together


def write_raw(raw: Path, meta: dict, rows: list[dict]) -> None:
    tmp = raw.with_name(raw.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta}) + "\n" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                   encoding="utf-8")
    tmp.replace(raw)


def append_raw(raw: Path, rows: list[dict]) -> None:
    with raw.open("a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        fh.flush()


# ---------------------------------------------------------------- the verb

def load_chat_model(cfg: Config, dtype: str = "") -> tuple[Any, Any, UserTurnTemplate]:
    """Plain HF model + tokenizer of --modeling.base_model (dtype, device from modeling); refuses models
    without a chat template before loading any weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specforge_het.assets import resolve_model_path
    from specforge_het.models.base import resolve_device, resolve_dtype

    m = cfg.modeling
    if not m.base_model:
        raise ValueError("no model: give a chat model with a preset (--@smollm2) or --modeling.base_model PATH")
    path = resolve_model_path(m.base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    UserTurnTemplate(tokenizer, m.base_model)  # the refusal comes before the weights load
    from specforge_het.models.precision import fastest_dtype

    dtype = fastest_dtype(resolve_device(m.device)) if dtype == "auto" else (dtype or m.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype), attn_implementation=m.attn_implementation)
    model = model.to(resolve_device(m.device)).train(False)
    extra = tuple(sorted(end_ids(model.generation_config)))
    return model, tokenizer, UserTurnTemplate(tokenizer, m.base_model, extra)


def gen_prompts(cfg: Config, presets: list[str], out: str, n: int = 1000, seed: int = 0, batch_size: int = 32,
                max_new_tokens: int = 160, temperature: tuple[float, float] | float = (0.7, 1.1), top_p: float = 0.95,
                open_share: float = 0.1, max_generated: int = 0, min_chars: int = 20, max_chars: int = 1500,
                min_words: int = 4, language: str = "en", min_unique: float = 0.25, near_dup: float = 0.7,
                eval_overlap: float = 0.5, eval_files: tuple[str, ...] | str = (), seeds: str = "",
                dtype: str = "auto") -> str:
    """A chat model (--@smollm2 or --modeling.base_model) writes N user prompts into OUT (conversations JSONL).

    Args:
        out: output JSONL; also writes OUT.raw.jsonl (every completion, for resuming) and OUT.report.json.
        n: prompts to keep. seed: seed of every choice and draw (same seed, same settings: same file).
        batch_size: rows decoded together (continuous batching over 4 x batch_size prompts per call, for
            Llama/Qwen3/Gemma3 models; HF generate otherwise). max_new_tokens: cap of a user turn (no end of turn: dropped).
        dtype: auto (bfloat16 where the device computes it fast), float32, bfloat16.
        temperature: 'lo,hi' range (one value per prompt, drawn uniformly) or one value. top_p: nucleus mass.
        open_share: share of prompts whose system prompt is a persona alone (no category, no topic).
        max_generated: stop after this many completions even if fewer than N were kept (0 = 4 x N).
        min_chars, max_chars, min_words: length filter. language: 'en' or '' (off). min_unique: repetition filter.
        near_dup: word 3-gram containment at which a prompt is a near-duplicate of a kept one (1 = exact only).
        eval_overlap: word 5-gram containment at which a prompt overlaps an evaluation prompt (MT-Bench, GSM8K test).
        eval_files: more evaluation sets (JSONL) to keep out. seeds: own personas/topics JSON (see magpie_seeds.json).
    """
    temps = temperature_range(temperature)
    if n < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("--n, --batch_size and --max_new_tokens must be at least 1")
    extra = [eval_files] if isinstance(eval_files, str) and eval_files else list(eval_files or ())
    filt = PromptFilter(FilterSettings(min_chars, max_chars, min_words, language, min_unique, near_dup),
                        EvalSets(extra, eval_overlap))
    seed_data = load_seeds(seeds)
    model, tokenizer, turn = load_chat_model(cfg, dtype)
    meta = {"model": cfg.modeling.base_model, "dtype": str(model.dtype).removeprefix("torch."), "seed": seed, "batch_size": batch_size,
            "max_new_tokens": max_new_tokens, "temperature": list(temps), "top_p": top_p, "open_share": open_share,
            "seeds": seeds or SEEDS_FILE.name, "system_turn": turn.system}
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    raw = out_path.with_name(out_path.stem + ".raw.jsonl")
    rows = read_raw(raw, meta)
    write_raw(raw, meta, rows)  # drops a torn last batch
    kept = _Kept(filt, n, seed, resumed=len(rows))
    kept.take(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else turn.stop_ids[0]
    writer = _Writer(model, turn, seed_data, seed, temps, open_share, max_new_tokens, top_p, batch_size, pad)
    index = _generate(writer, kept, raw, len(rows), max_generated or 4 * n)
    _write_prompts(out_path, kept, meta, index)
    return str(out_path)


def temperature_range(temperature: tuple[float, float] | float) -> tuple[float, float]:
    temps = tuple(float(t) for t in (temperature if isinstance(temperature, (tuple, list)) else [temperature] * 2))
    if len(temps) != 2 or not 0 <= temps[0] <= temps[1]:
        raise ValueError(f"--temperature {temperature!r}: give one value or 'lo,hi' with 0 <= lo <= hi, e.g. 0.7,1.1")
    return temps[0], temps[1]


class _Kept:
    """The prompts kept so far (at most n) and the run's counters; `take` passes completions through the filters."""

    def __init__(self, filt: PromptFilter, n: int, seed: int, resumed: int) -> None:
        self.filt, self.n, self.seed = filt, n, seed
        self.rows: list[dict] = []
        self.stats = {"resumed": resumed, "examined": 0, "generated": 0, "new_tokens": 0, "seconds": 0.0}

    def full(self) -> bool:
        return len(self.rows) >= self.n

    def take(self, rows: list[dict]) -> None:
        for row in rows:
            if self.full():
                continue
            self.stats["examined"] += 1
            if row["finish"] != "stop":
                self.filt.drop("no end of turn" if row["finish"] == "length" else "other special token", row["text"])
            elif self.filt.check(f"gen_prompts-{self.seed}-{row['index']}", [row["text"]]) is None:
                self.rows.append(row)


@dataclass
class _Writer:
    """The chat model writing user turns, and the settings every call shares."""

    model: Any
    turn: UserTurnTemplate
    seeds: dict
    seed: int
    temps: tuple[float, float]
    open_share: float
    max_new_tokens: int
    top_p: float
    batch_size: int
    pad: int

    def plans(self, start: int, stop: int) -> list[dict]:
        plans = [plan(self.seeds, self.seed, i, self.temps, self.open_share) for i in range(start, stop)]
        if not self.turn.system:  # no system turn: nothing steers the prompt but the temperature
            plans = [{**p, "category": "open", "topic": "", "system": ""} for p in plans]
        return plans

    def write(self, plans: list[dict], stats: dict) -> list[dict]:
        """One call: the raw rows (plan, text, finish reason, new tokens) of `plans`; adds time and tokens to stats."""
        return write_turns(self.model, self.turn, [self.turn.prefix_ids(p["system"]) for p in plans], plans,
                           self.max_new_tokens, self.top_p, self.batch_size, self.pad, stats)


def write_turns(model: Any, turn: UserTurnTemplate, prefixes: list[list[int]], plans: list[dict], max_new_tokens: int,
                top_p: float, slots: int, pad: int, stats: dict) -> list[dict]:
    """User turns sampled after each prefix with its plan's temperature and seed: raw rows {**plan, text, finish,
    new_tokens}; adds the time and new tokens to stats."""
    t0 = time.perf_counter()
    done = complete(model, prefixes, max_new_tokens, [p["temperature"] for p in plans], [p["seed"] for p in plans],
                    turn.stop_ids, pad, top_p, slots=slots)
    stats["seconds"] += time.perf_counter() - t0
    rows = []
    for p, ids in zip(plans, done):
        text, finish = turn.finish(ids)
        rows.append({**p, "text": text, "finish": finish, "new_tokens": len(ids)})
        stats["new_tokens"] += len(ids)
    return rows


def _generate(writer: _Writer, kept: _Kept, raw: Path, index: int, max_generated: int) -> int:
    """Calls of 4 x batch_size prompts from `index` on, each appended to the raw file, until n are kept or
    `max_generated` completions exist; returns the completions made."""
    stats = kept.stats
    while not kept.full() and index < max_generated:
        batch = writer.write(writer.plans(index, min(index + 4 * writer.batch_size, max_generated)), stats)
        append_raw(raw, batch)
        kept.take(batch)
        stats["generated"] += len(batch)
        index += len(batch)
        console.print(f"gen_prompts: {index} generated, {len(kept.rows)}/{kept.n} kept "
                      f"({stats['new_tokens'] / stats['seconds']:.0f} new tokens/s)")
    return index


def _write_prompts(out_path: Path, kept: _Kept, meta: dict, index: int) -> None:
    """OUT (conversations JSONL) and OUT.report.json; a warning when fewer than n were kept."""
    convs = [{"id": f"gen_prompts-{kept.seed}-{r['index']}", "conversations": [{"role": "user", "content": r["text"]}]}
             for r in kept.rows]
    write_conversations(out_path, convs)
    report = write_report(out_path, "gen_prompts", kept.filt, total=int(kept.stats["examined"]), written=len(convs),
                          settings=meta, extra={"n": kept.n, "throughput": _throughput(kept.stats),
                                                "categories": _categories(kept.rows)})
    print_report(report)
    if len(convs) < kept.n:
        console.print(f"[yellow]warning:[/] kept {len(convs)} of {kept.n} prompts after {index} completions; raise "
                      "--max_generated or loosen the filters (--near_dup, --min_chars, --language '')")


def _throughput(stats: dict) -> dict:
    s = stats["seconds"] or float("nan")
    return {**stats, "seconds": round(stats["seconds"], 2), "new_tokens_per_s": round(stats["new_tokens"] / s, 1),
            "completions_per_s": round(stats["generated"] / s, 2)}


def _categories(kept: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in kept:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    return dict(sorted(counts.items()))
