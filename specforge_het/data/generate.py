"""`gen_dataset`: the base model answers every user turn of a prompt file; the result is a dataset folder.

Turn k of a conversation is asked after the base's own answer to turn k-1; assistant turns in the
file are replaced (the draft learns the base's distribution). Conversations are processed in fixed
batches (global index // batch_size), each committed as one part file (store.py), so a killed run
resumes where it stopped and gives the same dataset as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.table import Table

from specforge_het.config import Config, ConfigError, save_json_config
from specforge_het.data import store
from specforge_het.data.gen_common import Conv, RunStats, console, part_size, resolved_dtype


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


RESUME_KEYS = ("source", "ds_range", "max_length", "max_new_tokens", "temperature", "system_prompt",
               "chat_template_sha", "seed", "batch_size", "mode", "part_size", "dtype")


def prompts_sha(convs: list) -> str:
    """The identity of the prompts a run answers (ids, system prompts, user turns), independent of where
    the prompt file lies: a checkout or run folder that moved still resumes."""
    return store.text_sha(json.dumps([[c.id, c.system, c.users] for c in convs], ensure_ascii=False))


def check_resume(out: Path, meta: dict) -> None:
    """A rerun into an existing output dir must use the settings that made it. The prompts are compared by
    content (`prompts_sha`) where both runs recorded it, else by the prompt file's path."""
    if not (out / store.META).is_file():
        return
    old = store.read_meta(out)
    if old.get("feature_layers") and not meta.get("feature_layers"):
        raise store.DatasetDirError(
            f"{out} stores features (layers {old['feature_layers']}, e.g. from add_features) and this run stores none: "
            "to resume into it, add --dataset_generation.store_features true with the same algorithm preset "
            "(e.g. --@eagle_v3), or generate into another --dataset_generation.output_dir and merge_datasets.")
    store.check_compatible(old, meta, ("in the output dir", "this run"))
    by_content = bool(old.get("prompts_sha")) and bool(meta.get("prompts_sha"))
    if by_content and old["prompts_sha"] != meta["prompts_sha"]:
        raise store.DatasetDirError(
            f"{out} answers other prompts than this run (prompt file {old.get('source')!r} then, {meta.get('source')!r} "
            "now, in the range given): rerun with the same prompts to resume, or use another --dataset_generation.output_dir.")
    for key in RESUME_KEYS:
        if key == "source" and by_content:
            continue
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


def log_bad_inputs(out: Path, report) -> None:
    """Bad lines of the prompt file into errors.jsonl (once, however often the run is resumed)."""
    seen = {(e.get("where"), e.get("reason")) for e in store.read_errors(out) if e.get("kind") == "bad_input"}
    for p in report.problems:
        if (p.where, p.reason) not in seen:
            store.append_error(out, {"kind": "bad_input", "where": p.where, "reason": p.reason})


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
        raise ConfigError("gen_dataset needs a prompt file: gen_dataset PROMPTS.jsonl (or --prompts PROMPTS.jsonl)")
    if not cfg.modeling.base_model:
        raise ConfigError("no base model: give a preset (e.g. --@smollm2) or --modeling.base_model PATH")
    if g.servers and g.store_features:
        raise ConfigError("stored features need the base in this process: drop --dataset_generation.store_features "
                         "for server mode (--dataset_generation.servers), or drop the servers.")
    if g.batch_size < 1:
        raise ConfigError("--dataset_generation.batch_size must be >= 1")
    report = BadInputReport(strict=g.strict)
    out = Path(g.output_dir)
    convs = to_convs(read_conversations(prompts, report), Path(prompts).resolve(), g.system_prompt)
    a, b = parse_range(g.ds_range, len(convs))
    store.clean_temp_files(out)
    engine = make_engine(cfg)
    layers = feature_layers_for(cfg, engine.num_layers)
    meta = _identity(cfg, engine.tokenizer, engine.describe(), layers, len(convs),
                     (a, b) if str(g.ds_range).strip() else None, str(Path(prompts).resolve()))
    meta["prompts_sha"] = prompts_sha(convs[a:b])
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
