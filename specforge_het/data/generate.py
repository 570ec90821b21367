"""`gen_dataset`: the base model answers every user turn of a prompt file; the result is a dataset folder.

Turn k of a conversation is asked after the base's own answer to turn k-1; assistant turns in the
file are replaced (the draft learns the base's distribution). Conversations are processed in fixed
batches (global index // batch_size), each committed as one part file (store.py), so a killed run
resumes where it stopped and gives the same dataset as an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from specforge_het.config import Config, save_json_config
from specforge_het.data import store

console = Console(stderr=True)


@dataclass
class Conv:
    """One conversation to answer: its user turns and, as they come, the base's answers."""

    index: int
    id: str
    system: str
    users: list[str]
    where: tuple[str, int]  # (file, line) for bad-input reports
    answers: list[str] = field(default_factory=list)
    skipped: str = ""  # reason, when skipped for good
    failed: str = ""  # request error (server mode): retried next run
    new_tokens: int = 0
    finish: list[str] = field(default_factory=list)  # per answer: "stop" | "length" (server mode: unknown)
    last_turn: tuple[list[int], list[int]] | None = None  # (prompt ids, generated ids) of the last answer, in process

    @property
    def finish_reason(self) -> str:
        """'length' when the last answer hit its token budget (the conversation ends there), else 'stop'."""
        return self.finish[-1] if self.finish else "stop"

    def messages(self, upto: int | None = None) -> list[dict]:
        """System (if any), then user/assistant turns; ends with user turn `upto` when given."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        last = len(self.users) - 1 if upto is None else upto
        for k in range(last + 1):
            msgs.append({"role": "user", "content": self.users[k]})
            if k < len(self.answers) and (upto is None or k < upto):
                msgs.append({"role": "assistant", "content": self.answers[k]})
        return msgs


@dataclass
class RunStats:
    resumed: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    new_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)


def parse_range(spec: str, n: int) -> tuple[int, int]:
    """'a,b' -> (a, min(b, n)); '' -> (0, n)."""
    if not str(spec).strip():
        return 0, n
    parts = [p.strip() for p in str(spec).strip("[]()").split(",")]
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts) or not 0 <= int(parts[0]) < int(parts[1]):
        raise ValueError(f"--dataset_generation.ds_range '{spec}' is not 'a,b' with 0 <= a < b (conversations a..b-1).")
    return int(parts[0]), min(int(parts[1]), n)


def _line_numbers(path: Path) -> dict[str, int]:
    """id -> line of the valid conversation with that id (for file:line in reports)."""
    import json

    from specforge_het.data.formats import conversation_problem

    lines: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if conversation_problem(row) is None:
                lines.setdefault(row["id"], lineno)
    return lines


def to_convs(rows: list[dict], source: Path, system_prompt: str) -> list[Conv]:
    """Schema rows -> Conv (index = position among the file's valid conversations; global across ranges).

    The file's own system turn wins over `system_prompt`; its assistant turns are dropped (the base answers).
    """
    lines = _line_numbers(source)
    out = []
    for i, row in enumerate(rows):
        turns = row["conversations"]
        system = next((t["content"] for t in turns if t["role"] == "system"), system_prompt)
        users = [t["content"] for t in turns if t["role"] == "user"]
        out.append(Conv(i, str(row["id"]), system, users, (str(source), lines.get(row["id"], 0))))
    return out


def _identity(cfg: Config, tokenizer, base_desc: dict, layers: list[int], n: int, rng: tuple[int, int] | None,
              source: str) -> dict:
    g = cfg.dataset_generation
    return {
        "base": base_desc,
        "tokenizer": {"name_or_path": cfg.modeling.base_model, "vocab_size": len(tokenizer),
                      "fingerprint": store.tokenizer_fingerprint(tokenizer)},
        "feature_layers": layers, "feature_dtype": g.feature_dtype if layers else None,
        "hidden_size": base_desc["hidden_size"], "source": source,
        "ds_range": list(rng) if rng else None, "num_conversations": n,
        "max_length": g.max_length, "max_new_tokens": g.max_new_tokens, "temperature": g.temperature,
        "system_prompt": g.system_prompt, "chat_template_sha": store.text_sha(getattr(tokenizer, "chat_template", "")),
        "seed": cfg.inference.seed, "batch_size": g.batch_size, "mode": "server" if g.servers else "local",
        "part_size": part_size(g), "dtype": None if g.servers else resolved_dtype(cfg),
    }


def part_size(g) -> int:
    return g.part_size if g.part_size > 0 else 4 * g.batch_size


def resolved_dtype(cfg: Config) -> str:
    """--dataset_generation.dtype, with auto resolved for this device (bfloat16 where it is fast)."""
    from specforge_het.data.batch_gen import fastest_dtype
    from specforge_het.models.base import resolve_device

    d = cfg.dataset_generation.dtype
    return fastest_dtype(resolve_device(cfg.modeling.device)) if d == "auto" else d


RESUME_KEYS = ("source", "ds_range", "max_length", "max_new_tokens", "temperature", "system_prompt",
               "chat_template_sha", "seed", "batch_size", "mode", "part_size", "dtype")


def check_resume(out: Path, meta: dict) -> None:
    """A rerun into an existing output dir must use the settings that made it."""
    if not (out / store.META).is_file():
        return
    old = store.read_meta(out)
    store.check_compatible(old, meta, ("in the output dir", "this run"))
    for key in RESUME_KEYS:
        if old.get(key) != meta.get(key):
            raise store.DatasetDirError(
                f"{out} was generated with {key}={old.get(key)!r}, this run has {key}={meta.get(key)!r}. "
                "Rerun with the same settings to resume, or use another --dataset_generation.output_dir.")


def feature_layers_for(cfg: Config, num_layers: int) -> list[int]:
    from specforge_het.algorithms import get_algorithm

    if not cfg.dataset_generation.store_features:
        return []
    layers = list(cfg.modeling.feature_layers) or get_algorithm(cfg.modeling.algorithm).default_feature_layers(num_layers)
    # the final normed state (-1) too: offline training turns it into the base's distribution with the LM head
    return layers if -1 in layers else [*layers, -1]


def token_row(tokenizer, c: Conv) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) from the tokens the base saw and wrote in the conversation's last turn.

    The row is that turn's prompt (earlier answers in it are loss-masked where the template puts
    them) followed by exactly the generated ids: the end-of-turn token only if the base wrote it.
    """
    from specforge_het.data.formats import assistant_spans, uses_template

    prompt, new = c.last_turn
    ids = [*prompt, *new]
    mask = [0] * len(prompt) + [1] * len(new)
    for start, end in assistant_spans(tokenizer, c.messages(len(c.answers) - 1), prompt, uses_template(tokenizer)):
        mask[start:end] = [1] * (end - start)
    return ids, mask


def finalize(tokenizer, convs: list[Conv], max_length: int, report) -> tuple[list[dict], list[dict]]:
    """Answered conversations into rows (`finish_reason` 'length' when the last answer hit its budget);
    too-long ones become skipped records.

    In-process generation keeps the exact tokens (`token_row`). Server answers come back as text
    and are tokenised with the chat template (`tokenize_conversation`).
    """
    from specforge_het.data.formats import TooLongError, tokenize_conversation

    rows, skipped = [], []
    for c in convs:
        if c.failed:
            continue
        if not c.skipped:
            try:
                if c.last_turn is not None:
                    ids, mask = token_row(tokenizer, c)
                else:
                    ids, mask = tokenize_conversation(tokenizer, c.messages(), max_length)
                rows.append({"id": c.id, "index": c.index, "input_ids": [int(x) for x in ids],
                             "loss_mask": [int(x) for x in mask], "finish_reason": c.finish_reason})
                continue
            except TooLongError as e:
                c.skipped = str(e)
            except ValueError as e:  # the chat template refuses the conversation
                c.skipped = f"template refused: {e}"
        report.add(c.where[0], c.where[1], c.skipped)
        skipped.append({"id": c.id, "index": c.index, "reason": c.skipped})
    return rows, skipped


def commit(out: Path, convs: list[Conv], rows: list[dict], skipped: list[dict], feats, stats: RunStats) -> None:
    if rows or skipped:
        store.write_part(out, rows, skipped, feats)
    for s in skipped:
        store.append_error(out, {"kind": "skipped", **s})
    for c in convs:
        if c.failed:
            store.append_error(out, {"kind": "request_failed", "id": c.id, "index": c.index, "error": c.failed})
    stats.done += len(rows)
    stats.skipped += len(skipped)
    stats.failed += sum(1 for c in convs if c.failed)
    stats.new_tokens += sum(c.new_tokens for c in convs)


def log_bad_inputs(out: Path, report) -> None:
    """Bad lines of the prompt file into errors.jsonl (once, however often the run is resumed)."""
    seen = {(e.get("where"), e.get("reason")) for e in store.read_errors(out) if e.get("kind") == "bad_input"}
    for p in report.problems:
        if (p.where, p.reason) not in seen:
            store.append_error(out, {"kind": "bad_input", "where": p.where, "reason": p.reason})


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[note]}"), console=console)


def summary_table(out: Path, stats: RunStats, ds) -> Table:
    import pyarrow.compute as pc

    elapsed = time.perf_counter() - stats.started
    table_ = ds.with_format("arrow")[:]
    tokens = pc.sum(pc.list_value_length(table_.column("input_ids"))).as_py() or 0
    masked = pc.sum(pc.list_flatten(table_.column("loss_mask"))).as_py() or 0
    table = Table(title=f"gen_dataset: {out}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in [
        ("conversations generated (this run)", stats.done), ("conversations already done (resumed)", stats.resumed),
        ("skipped for good (too long)", stats.skipped), ("failed requests (retried next run)", stats.failed),
        ("rows in dataset", len(ds)), ("tokens in dataset", tokens),
        ("loss-masked share", f"{masked / max(tokens, 1):.1%}"), ("time (this run)", f"{elapsed:.1f} s"),
        ("generated tokens / s", f"{stats.new_tokens / max(elapsed, 1e-9):.1f}"),
        ("stored feature bytes / token", f"{store.bytes_per_token(out):.1f}"),
    ]:
        table.add_row(name, str(value))
    return table


def gen_dataset(cfg: Config, presets: list[str], prompts: str = "") -> Path:
    """Answer every user turn of PROMPTS (our conversations JSONL) with the base model; write a dataset folder.

    Args:
        prompts: conversations JSONL ({"id", "conversations": [{"role", "content"}]}), e.g. from prepare_data.
    """
    from specforge_het.data.formats import read_conversations
    from specforge_het.data.report import BadInputReport

    g = cfg.dataset_generation
    if not prompts:
        raise SystemExit("gen_dataset needs a prompt file: gen_dataset PROMPTS.jsonl (or --prompts PROMPTS.jsonl)")
    if not cfg.modeling.base_model:
        raise SystemExit("no base model: give a preset (e.g. --@smollm2) or --modeling.base_model PATH")
    if g.servers and g.store_features:
        raise SystemExit("stored features need the base in this process: drop --dataset_generation.store_features "
                         "for server mode (--dataset_generation.servers), or drop the servers.")
    if g.batch_size < 1:
        raise SystemExit("--dataset_generation.batch_size must be >= 1")
    report = BadInputReport(strict=g.strict)
    out = Path(g.output_dir)
    convs = to_convs(read_conversations(prompts, report), Path(prompts).resolve(), g.system_prompt)
    a, b = parse_range(g.ds_range, len(convs))
    store.clean_temp_files(out)
    engine = make_engine(cfg)
    layers = feature_layers_for(cfg, engine.num_layers)
    meta = _identity(cfg, engine.tokenizer, engine.describe(), layers, len(convs),
                     (a, b) if str(g.ds_range).strip() else None, str(Path(prompts).resolve()))
    check_resume(out, meta)
    store.write_meta(out, meta)
    save_json_config(cfg, out, presets)
    log_bad_inputs(out, report)
    done = store.done_indices(out)
    todo = [c for c in convs[a:b] if c.index not in done]
    stats = RunStats(resumed=(b - a) - len(todo))
    engine.run(out, todo, layers, report, stats)
    ds = store.assemble(out)
    report.print_summary(console)
    console.print(summary_table(out, stats, ds))
    return out


def make_engine(cfg: Config):
    """In-process generation with the base model, or generation through servers."""
    if cfg.dataset_generation.servers:
        from specforge_het.data.server_client import ServerEngine

        return ServerEngine(cfg)
    from specforge_het.data.local_engine import LocalEngine

    return LocalEngine(cfg)
