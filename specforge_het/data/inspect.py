"""`probe_datasets` and `view`: look at training data before training on it.

A dataset path is one of
  - a folder made by gen_dataset: `meta.json` + `dataset/` (Arrow, `save_to_disk`) + optional `features/`;
  - an EAGLE data folder (one `.ckpt` per conversation, see eagle_format.py);
  - a conversations JSONL (our schema); tokens are counted with the base tokenizer when
    `--modeling.base_model` (or a base preset) is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from specforge_het.config import Config
from specforge_het.data.report import BadInputReport

GENERATED, EAGLE, CONVERSATIONS = "generated", "eagle", "conversations"
MASKED, UNMASKED = "green", "red"


@dataclass
class DatasetStats:
    path: str
    kind: str
    rows: int = 0
    lengths: list[int] = field(default_factory=list)  # tokens per row ([] when not tokenised)
    masked_tokens: int = 0
    no_assistant: int = 0  # rows whose loss mask is all zero
    disk_bytes: int = 0
    feature_bytes: int = 0  # stored features (features/*.safetensors, or the EAGLE .ckpt files)
    notes: dict[str, Any] = field(default_factory=dict)  # kind-specific figures (turns, chars, meta…)
    bad: BadInputReport = field(default_factory=BadInputReport)

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    @property
    def masked_share(self) -> float:
        return self.masked_tokens / self.tokens if self.tokens else 0.0

    @property
    def feature_bytes_per_token(self) -> float:
        return self.feature_bytes / self.tokens if self.tokens else 0.0


# ---------------------------------------------------------------- detection and loading

def dataset_kind(path: str | Path) -> str:
    p = Path(path)
    if p.is_dir() and (p / "meta.json").is_file() and (p / "dataset").is_dir():
        return GENERATED
    if p.is_dir() and next(p.rglob("*.ckpt"), None) is not None:
        return EAGLE
    if p.is_file() and p.suffix in (".jsonl", ".json"):
        return CONVERSATIONS
    if p.is_dir() and (p / "meta.json").is_file():
        raise ValueError(f"'{p}' has meta.json but no assembled dataset/ (an interrupted gen_dataset run): "
                         "rerun the same gen_dataset command to resume and assemble it")
    raise FileNotFoundError(f"'{p}' is not a dataset: expected a gen_dataset folder (meta.json + dataset/), "
                            "an EAGLE folder of .ckpt files, or a conversations .jsonl file")


def _bytes(root: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in root.rglob(pattern) if f.is_file())


def load_generated(path: str | Path) -> tuple[Any, dict]:
    """(datasets.Dataset, meta dict) of a gen_dataset folder."""

    root = Path(path)
    from specforge_het.data.store import load_dataset_dir

    return load_dataset_dir(root)


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    from specforge_het.assets import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(name))


def _row_sums(column: Any) -> tuple[list[int], list[int]]:
    """(length, sum) of every row of an Arrow list column, without building Python lists."""
    import numpy as np
    import pyarrow.compute as pc

    arr = column.combine_chunks()
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    cumulative = np.concatenate([[0], np.cumsum(values)])
    ends = np.cumsum(lengths)
    return lengths.tolist(), (cumulative[ends] - cumulative[ends - lengths]).tolist()


# ---------------------------------------------------------------- statistics

def _generated_stats(path: Path) -> DatasetStats:
    ds, meta = load_generated(path)
    table = ds.with_format("arrow")[:]
    lengths, _ = _row_sums(table.column("input_ids"))
    _, masked = _row_sums(table.column("loss_mask"))
    stats = DatasetStats(str(path), GENERATED, len(ds), lengths, sum(masked), sum(1 for m in masked if m == 0),
                         _bytes(path), _bytes(path / "features", "*.safetensors") if (path / "features").is_dir() else 0)
    stats.notes["tokenizer"] = meta.get("tokenizer", {}).get("name_or_path", "?")
    stats.notes.update({k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) and len(str(v)) < 80})
    return stats


def _eagle_stats(path: Path) -> DatasetStats:
    from specforge_het.data.eagle_format import iter_eagle_folder

    stats = DatasetStats(str(path), EAGLE, disk_bytes=_bytes(path), bad=BadInputReport(strict=False))
    for row in iter_eagle_folder(path, stats.bad):
        stats.rows += 1
        stats.lengths.append(len(row["input_ids"]))
        masked = sum(row["loss_mask"])
        stats.masked_tokens += masked
        stats.no_assistant += masked == 0
        stats.notes["hidden size"] = row["features"].shape[1]
        stats.notes["feature dtype"] = str(row["features"].dtype).removeprefix("torch.")
    stats.feature_bytes = _bytes(path, "*.ckpt")
    return stats


def _conversation_stats(cfg: Config, path: Path) -> DatasetStats:
    from specforge_het.data.formats import read_conversations_with_lines, tokenize_conversation

    stats = DatasetStats(str(path), CONVERSATIONS, disk_bytes=path.stat().st_size, bad=BadInputReport(strict=False))
    rows = read_conversations_with_lines(path, stats.bad)
    stats.rows = len(rows)
    turns = [t for _, r in rows for t in r["conversations"]]
    for role in ("system", "user", "assistant"):
        stats.notes[f"{role} turns"] = sum(t["role"] == role for t in turns)
    stats.notes["characters"] = sum(len(t["content"]) for t in turns)
    if not cfg.modeling.base_model:
        stats.notes["tokens"] = "give --modeling.base_model (or a base preset) to count tokens"
        return stats
    tok = load_tokenizer(cfg.modeling.base_model)
    stats.notes["tokenizer"] = cfg.modeling.base_model
    for lineno, row in rows:
        try:
            ids, mask = tokenize_conversation(tok, row["conversations"], cfg.dataset.max_length, cfg.dataset.system_prompt)
        except ValueError as e:  # too long, or the template refuses it
            stats.bad.add(str(path), lineno, f"{e}" if ":" in str(e) else f"refused: {e}")
            continue
        stats.lengths.append(len(ids))
        stats.masked_tokens += sum(mask)
        stats.no_assistant += not any(mask)
    return stats


def dataset_stats(cfg: Config, path: str | Path) -> DatasetStats:
    """Figures of one dataset (any of the three kinds)."""
    p = Path(path)
    kind = dataset_kind(p)
    if kind == GENERATED:
        return _generated_stats(p)
    if kind == EAGLE:
        return _eagle_stats(p)
    return _conversation_stats(cfg, p)


# ---------------------------------------------------------------- rendering

def length_histogram(lengths: list[int], bins: int = 10) -> list[tuple[int, int, int]]:
    """(first, last, count) of equal-width length bins covering min..max."""
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    width = max(1, math.ceil((hi - lo + 1) / bins))
    counts = [0] * math.ceil((hi - lo + 1) / width)
    for n in lengths:
        counts[(n - lo) // width] += 1
    return [(lo + i * width, lo + (i + 1) * width - 1, c) for i, c in enumerate(counts)]


def histogram_table(lengths: list[int], bins: int = 10, bar: int = 40) -> Table:
    table = Table(title="tokens per row", show_edge=False)
    for col in ("tokens", "rows", ""):
        table.add_column(col, justify="left" if col == "" else "right")
    rows = length_histogram(lengths, bins)
    top = max((c for *_, c in rows), default=1) or 1
    for first, last, count in rows:
        table.add_row(f"{first}–{last}", str(count), "█" * round(bar * count / top))
    return table


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def stats_table(s: DatasetStats) -> Table:
    table = Table(title=f"{s.path} ({s.kind})")
    table.add_column("what")
    table.add_column("value", justify="right", overflow="fold")
    table.add_row("rows", str(s.rows))
    if s.lengths:
        table.add_row("tokens", f"{s.tokens} (mean {s.tokens / len(s.lengths):.1f}, min {min(s.lengths)}, max {max(s.lengths)})")
        table.add_row("loss-masked tokens", f"{s.masked_tokens} ({100 * s.masked_share:.1f}%)")
        style = "yellow" if s.no_assistant else ""
        table.add_row("rows without assistant span", f"[{style}]{s.no_assistant}[/]" if style else "0")
    table.add_row("on disk", f"{human_bytes(s.disk_bytes)} ({s.disk_bytes} bytes)")
    if s.feature_bytes:
        table.add_row("stored features", f"{human_bytes(s.feature_bytes)}, {s.feature_bytes_per_token:.0f} bytes/token")
    for key, value in s.notes.items():
        table.add_row(escape(str(key)), escape(str(value)))
    if s.bad.count:
        table.add_row("[yellow]bad inputs skipped[/]", f"[yellow]{s.bad.count}[/]")
    return table


def probe_datasets(cfg: Config, presets: list[str], *paths: str, console: Console | None = None) -> None:
    """Summarise datasets: rows, tokens, loss-masked share, length histogram, storage on disk."""
    console = console or Console()
    if not paths:
        raise ValueError("probe_datasets needs at least one PATH (dataset folder, EAGLE folder or conversations .jsonl)")
    for path in paths:
        s = dataset_stats(cfg, path)
        console.print(stats_table(s))
        if s.lengths:
            console.print(histogram_table(s.lengths))
        if s.bad.count:
            s.bad.print_summary(console)


def masked_text(tokenizer: Any, input_ids: list[int], loss_mask: list[int]) -> Text:
    """The tokens decoded one by one: loss-masked (trained) tokens green, the rest red; one span per token."""
    text = Text()
    for token, m in zip(input_ids, loss_mask):
        piece = tokenizer.decode([int(token)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text.append(piece, style=MASKED if m else UNMASKED)
    return text


def _samples(cfg: Config, path: Path, index: list[int]) -> tuple[Any, list[tuple[int, str, list[int], list[int]]]]:
    """(tokenizer, [(index, id, input_ids, loss_mask)]) of the chosen rows of any dataset kind."""
    kind = dataset_kind(path)
    if kind == GENERATED:
        ds, meta = load_generated(path)
        _check_range(index, len(ds), path)
        tok = load_tokenizer(meta["tokenizer"]["name_or_path"])
        return tok, [(i, str(ds[i]["id"]), list(ds[i]["input_ids"]), list(ds[i]["loss_mask"])) for i in index]
    if not cfg.modeling.base_model:
        raise ValueError(f"'{path}' ({kind}) carries no tokenizer: give --modeling.base_model (or a base preset such "
                         "as --@smollm2) to decode it")
    tok = load_tokenizer(cfg.modeling.base_model)
    if kind == EAGLE:
        from specforge_het.data.eagle_format import eagle_files, read_eagle_file

        files = eagle_files(path)
        _check_range(index, len(files), path)
        data = [read_eagle_file(files[i]) for i in index]
        return tok, [(i, files[i].relative_to(path).as_posix(), d["input_ids"].tolist(), d["loss_mask"].tolist())
                     for i, d in zip(index, data)]
    from specforge_het.data.formats import read_conversations, tokenize_conversation

    report = BadInputReport(strict=False)
    rows = read_conversations(path, report)
    _check_range(index, len(rows), path)
    out = []
    for i in index:
        ids, mask = tokenize_conversation(tok, rows[i]["conversations"], None, cfg.dataset.system_prompt)
        out.append((i, rows[i]["id"], ids, mask))
    return tok, out


def _check_range(index: list[int], n: int, path: Path) -> None:
    bad = [i for i in index if not 0 <= i < n]
    if bad:
        raise ValueError(f"index {bad[0]} out of range: '{path}' has {n} rows (0..{n - 1})")


def view(cfg: Config, presets: list[str], path: str, index: list[int] | int = 0, console: Console | None = None) -> None:
    """Print rows INDEX of PATH with loss-masked tokens in green and the rest in red; warn about rows
    without an assistant span (nothing to train on)."""
    console = console or Console()
    index = [int(i) for i in (index if isinstance(index, (list, tuple)) else [index])]
    tok, samples = _samples(cfg, Path(path), index)
    console.print(Text.assemble(("loss-masked (trained)", MASKED), "  ", ("not trained", UNMASKED)))
    for i, rid, ids, mask in samples:
        console.rule(f"row {i}  id {escape(rid)}  {len(ids)} tokens, {sum(mask)} loss-masked")
        console.print(masked_text(tok, ids, mask))
        if not any(mask):
            console.print(f"[yellow]warning: row {i} (id {escape(rid)}) has no assistant span: its loss mask is all "
                          "zero, so it trains nothing. Answer it with gen_dataset, or check the chat template.[/]")
