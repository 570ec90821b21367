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

import torch
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
    }


RESUME_KEYS = ("source", "ds_range", "max_length", "max_new_tokens", "temperature", "system_prompt",
               "chat_template_sha", "seed", "batch_size", "mode")


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


def finalize(tokenizer, convs: list[Conv], max_length: int, report) -> tuple[list[dict], list[dict]]:
    """Tokenise answered conversations into rows; too-long ones become skipped records."""
    from specforge_het.data.formats import TooLongError, tokenize_conversation

    rows, skipped = [], []
    for c in convs:
        if c.failed:
            continue
        if not c.skipped:
            try:
                ids, mask = tokenize_conversation(tokenizer, c.messages(), max_length)
                rows.append({"id": c.id, "index": c.index, "input_ids": [int(x) for x in ids],
                             "loss_mask": [int(x) for x in mask]})
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
    return LocalEngine(cfg)


class _PerRowSampler:
    """A logits processor that samples each row with its own generator and leaves only that token.

    HF's greedy step then picks it, so every conversation's draws come from its own seeded stream,
    whatever else shares its batch. Rows that already ended draw nothing.
    """

    def __init__(self, gens: list[torch.Generator], temperature: float, prompt_len: int, eos: torch.Tensor):
        self.gens, self.temperature, self.prompt_len, self.eos = gens, temperature, prompt_len, eos

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ended = torch.isin(input_ids[:, self.prompt_len:], self.eos).any(dim=1)  # [B]
        out = torch.full_like(scores, float("-inf"))
        for i, gen in enumerate(self.gens):
            if ended[i]:
                out[i] = scores[i]
                continue
            probs = torch.softmax(scores[i].float() / self.temperature, dim=-1)  # [V]
            out[i, torch.multinomial(probs, 1, generator=gen)] = 0.0
        return out


class LocalEngine:
    """The base model in this process: left-padded batches through HF `generate`."""

    def __init__(self, cfg: Config):
        from specforge_het.models.base import BaseModel

        m = cfg.modeling
        self.cfg, self.g = cfg, cfg.dataset_generation
        self.base = BaseModel.load(m.base_model, m.dtype, m.device, m.attn_implementation)
        self.tokenizer = self.base.tokenizer
        self.num_layers = self.base.num_layers
        gen_eos = self.base.model.generation_config.eos_token_id
        eos = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        eos |= {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        self.eos = sorted(eos)
        pad = self.tokenizer.pad_token_id
        self.pad = pad if pad is not None else (self.eos[0] if self.eos else 0)

    def describe(self) -> dict:
        return self.base.describe()

    def run(self, out: Path, todo: list[Conv], layers: list[int], report, stats: RunStats) -> None:
        batches: dict[int, list[Conv]] = {}
        for c in todo:
            batches.setdefault(c.index // self.g.batch_size, []).append(c)
        with progress_bar() as bar:
            task = bar.add_task("generating", total=len(todo), note="")
            for batch in batches.values():
                self.answer(batch)
                rows, skipped = finalize(self.tokenizer, batch, self.g.max_length, report)
                feats = self.features(rows, layers) if layers else None
                commit(out, batch, rows, skipped, feats, stats)
                bar.update(task, advance=len(batch), note=f"{stats.new_tokens} new tokens")

    def answer(self, batch: list[Conv]) -> None:
        """Turn by turn: turn k of every conversation in the batch, in one generate call."""
        from specforge_het.inference.prompts import render

        gens = {c.index: torch.Generator(self.base.device).manual_seed(self.cfg.inference.seed + c.index)
                for c in batch}
        for k in range(max((len(c.users) for c in batch), default=0)):
            active, prompts = [], []
            for c in batch:
                if c.skipped or k >= len(c.users):
                    continue
                ids = render(self.tokenizer, c.messages(k))[0].tolist()
                if len(ids) >= self.g.max_length:
                    c.skipped = f"too long: turn {k} prompt has {len(ids)} tokens, max_length {self.g.max_length}"
                    continue
                active.append(c)
                prompts.append(ids)
            if active:
                for c, (text, n) in zip(active, self.generate(prompts, [gens[c.index] for c in active])):
                    c.answers.append(text)
                    c.new_tokens += n

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], gens: list[torch.Generator]) -> list[tuple[str, int]]:
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)  # [B, L] left-padded
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        eos = torch.tensor(self.eos, dtype=torch.long, device=self.base.device)
        gc = GenerationConfig(max_new_tokens=self.g.max_new_tokens, do_sample=False, pad_token_id=self.pad,
                              eos_token_id=self.eos or None)
        procs = [_PerRowSampler(gens, self.g.temperature, width, eos)] if self.g.temperature > 0 else []
        seqs = self.base.model.generate(input_ids=ids.to(self.base.device), attention_mask=mask.to(self.base.device),
                                        generation_config=gc, logits_processor=LogitsProcessorList(procs))
        out = []
        for row in seqs[:, width:].tolist():
            cut = next((j for j, t in enumerate(row) if t in self.eos), len(row))
            out.append((self.tokenizer.decode(row[:cut], skip_special_tokens=True), min(cut + 1, len(row))))
        return out

    @torch.no_grad()
    def features(self, rows: list[dict], layers: list[int]) -> dict[str, torch.Tensor]:
        """One forward over the final ids of the batch (right-padded): {str(index): [T, F*H] in feature_dtype}."""
        from specforge_het.models.base import resolve_dtype

        if not rows:
            return {}
        dtype = resolve_dtype(self.g.feature_dtype)
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)  # [B, T] right-padded
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        dev = self.base.device
        feats = self.base.features(ids.to(dev), tuple(layers), attention_mask=mask.to(dev)).features  # [B, T, F*H]
        return {str(r["index"]): feats[i, : len(r["input_ids"])].to(dtype).cpu() for i, r in enumerate(rows)}
