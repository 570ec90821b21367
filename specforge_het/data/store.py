"""The on-disk layout of a generated dataset, and the API the trainer reads it with.

    OUTPUT_DIR/
      meta.json                      what made the dataset (base, tokenizer fingerprint, feature layers, settings)
      parts/part-<first:07d>.jsonl   finished rows of one part: {"id", "index", "input_ids", "loss_mask", "finish_reason"}
      parts/part-<first:07d>.skipped.json   conversations of that batch skipped for good (too long), if any
      features/part-<first:07d>.safetensors one tensor per row, key "<index>", [T, F*H] in feature_dtype
      errors.jsonl                   bad inputs and failed requests (a log; failed requests are retried)
      dataset/                       the assembled Arrow dataset (`datasets.save_to_disk`), sorted by index

Every file is written atomically (a hidden temp file, then `os.replace`). A part file is the commit
point of its batch: its features and its skipped list are written before it, so a finished part
always has them, and a batch without a part file is redone from scratch on the next run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

FORMAT, VERSION = "specforge_het.dataset", 1
META, ERRORS, PARTS, FEATURES, DATASET = "meta.json", "errors.jsonl", "parts", "features", "dataset"


class DatasetDirError(ValueError):
    """A dataset folder that is missing, malformed or incompatible; the message says how to fix it."""


# ---------------------------------------------------------------- atomic files

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a hidden temp file in the same folder, then `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def clean_temp_files(path: str | Path) -> list[Path]:
    """Remove temp files left by a killed write (hidden `.*.tmp-*`, `.dataset.old-*`); returns what was removed."""
    root = Path(path)
    removed = []
    for sub in (root, root / PARTS, root / FEATURES):
        for tmp in [*sub.glob(".*.tmp-*"), *sub.glob(f".{DATASET}.old-*")] if sub.is_dir() else ():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def part_name(first_index: int) -> str:
    return f"part-{first_index:07d}"


def write_part(path: str | Path, rows: list[dict], skipped: list[dict], features: dict[str, torch.Tensor] | None) -> str:
    """Commit one batch: features, then the skipped list, then the rows (the commit point).

    `rows` hold id, index, input_ids, loss_mask; `skipped` hold id, index, reason. Returns the part name.
    """
    from safetensors.torch import save

    root = Path(path)
    indices = [r["index"] for r in rows] + [s["index"] for s in skipped]
    if not indices:
        raise ValueError("write_part: nothing to commit")
    name = part_name(min(indices))
    if features:
        blob = save({k: v.detach().to("cpu").contiguous().clone() for k, v in features.items()})
        atomic_write_bytes(root / FEATURES / f"{name}.safetensors", blob)
    if skipped:
        atomic_write_json(root / PARTS / f"{name}.skipped.json", skipped)
    lines = "".join(json.dumps({**{k: r[k] for k in ("id", "index", "input_ids", "loss_mask")},
                                "finish_reason": r.get("finish_reason", "stop")}) + "\n" for r in rows)
    atomic_write_bytes(root / PARTS / f"{name}.jsonl", lines.encode())
    return name


def part_files(path: str | Path) -> list[Path]:
    return sorted((Path(path) / PARTS).glob("part-*.jsonl"))


def part_rows(part: Path) -> Iterator[dict]:
    """The finished rows of one committed part file."""
    for lineno, line in enumerate(part.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetDirError(f"{part}:{lineno}: corrupt row ({e.msg}). Delete that part file and rerun "
                                  "gen_dataset: the batch will be generated again.") from None


def part_skipped(part: Path) -> list[dict]:
    """The conversations one committed part skipped for good (e.g. too long)."""
    side = part.with_name(part.name.removesuffix(".jsonl") + ".skipped.json")
    return json.loads(side.read_text()) if side.is_file() else []


def iter_rows(path: str | Path) -> Iterator[dict]:
    """Every finished row of every committed part, part by part."""
    for part in part_files(path):
        yield from part_rows(part)


def skipped_rows(path: str | Path) -> list[dict]:
    """Conversations skipped for good (e.g. too long) by committed parts."""
    return [r for part in part_files(path) for r in part_skipped(part)]


def finished_ids(path: str | Path) -> set[str]:
    """Ids of the rows already in the dataset's committed parts."""
    return {r["id"] for r in iter_rows(path)}


def done_indices(path: str | Path) -> set[int]:
    """Indices a rerun does not redo: finished rows and conversations skipped for good."""
    return {r["index"] for r in iter_rows(path)} | {s["index"] for s in skipped_rows(path)}


def append_error(path: str | Path, record: dict) -> None:
    """Append one record to errors.jsonl (a log: a torn last line from a kill is ignored on read)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ERRORS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def read_errors(path: str | Path) -> list[dict]:
    file = Path(path) / ERRORS
    if not file.is_file():
        return []
    out = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn line from a killed append
    return out


# ---------------------------------------------------------------- meta

def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the sorted (token, id) pairs of the vocabulary, hex[:16]."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]


def text_sha(text: str | None) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()[:16]


def read_meta(path: str | Path) -> dict:
    file = Path(path) / META
    if not file.is_file():
        raise DatasetDirError(f"'{path}' is not a generated dataset: {META} is missing. "
                              "Point at a gen_dataset --dataset_generation.output_dir.")
    meta = json.loads(file.read_text())
    if meta.get("format") != FORMAT:
        raise DatasetDirError(f"{file}: format is {meta.get('format')!r}, expected {FORMAT!r}.")
    return meta


def write_meta(path: str | Path, meta: dict) -> None:
    atomic_write_json(Path(path) / META, {"format": FORMAT, "version": VERSION, **meta})


def _base_key(base: dict) -> dict:
    """The base's identity; its name compares by last path component (the same model in other folders)."""
    return {**base, "name": Path(str(base.get("name", ""))).name}


def check_compatible(meta_a: dict, meta_b: dict, names: tuple[str, str] = ("A", "B")) -> None:
    """Raise DatasetDirError naming the first field that makes two datasets unusable together."""
    checks = [
        ("base", _base_key(meta_a.get("base", {})), _base_key(meta_b.get("base", {}))),
        ("tokenizer.fingerprint", meta_a.get("tokenizer", {}).get("fingerprint"),
         meta_b.get("tokenizer", {}).get("fingerprint")),
        ("feature_layers", list(meta_a.get("feature_layers") or []), list(meta_b.get("feature_layers") or [])),
    ]
    if meta_a.get("feature_layers"):
        checks.append(("feature_dtype", meta_a.get("feature_dtype"), meta_b.get("feature_dtype")))
    for field, a, b in checks:
        if a != b:
            raise DatasetDirError(f"incompatible datasets: {field} differs: {a!r} ({names[0]}) vs {b!r} ({names[1]}). "
                                  "Generate both with the same base model, tokenizer and feature settings.")


# ---------------------------------------------------------------- assembled dataset

def _features():
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"), "index": datasets.Value("int64"),
        "input_ids": datasets.Sequence(datasets.Value("int32")), "loss_mask": datasets.Sequence(datasets.Value("int8")),
        "finish_reason": datasets.Value("string"),  # "length": the last answer hit its token budget
    })


def assemble(path: str | Path):
    """Rebuild `dataset/` from the committed parts (sorted by index); returns the `datasets.Dataset`."""
    import datasets

    root = Path(path)
    rows = sorted(iter_rows(root), key=lambda r: r["index"])
    cols = {k: [r[k] for r in rows] for k in ("id", "index", "input_ids", "loss_mask")}
    cols["finish_reason"] = [r.get("finish_reason", "stop") for r in rows]  # parts written before it existed: stop
    ds = datasets.Dataset.from_dict(cols, features=_features())
    tmp, old = root / f".{DATASET}.tmp-{os.getpid()}", root / f".{DATASET}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        ds.save_to_disk(str(tmp))
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    if (root / DATASET).exists():
        os.replace(root / DATASET, old)
    os.replace(tmp, root / DATASET)
    shutil.rmtree(old, ignore_errors=True)
    return _load_arrow(root / DATASET)


def _load_arrow(path: Path):
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except IndexError:  # datasets cannot reload a saved dataset of 0 rows
        return datasets.Dataset.from_dict({k: [] for k in _features()}, features=_features())


def load_dataset_dir(path: str | Path):
    """(datasets.Dataset, meta) of a generated dataset folder."""
    meta = read_meta(path)
    if not (Path(path) / DATASET).is_dir():
        raise DatasetDirError(f"'{path}' has no assembled {DATASET}/ (the run was interrupted). "
                              "Rerun the same gen_dataset command: it resumes and assembles.")
    return _load_arrow(Path(path) / DATASET), meta


class FeatureStore:
    """Lazy reader of the feature shards of one dataset folder: index -> tensor [T, F*H]."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        self.path = Path(path)
        self._open = safe_open
        self._where: dict[int, Path] = {}
        self._handles: dict[Path, Any] = {}
        for shard in feature_files(self.path):
            for key in self._handle(shard).keys():
                self._where[int(key)] = shard

    def _handle(self, shard: Path):
        if shard not in self._handles:
            self._handles[shard] = self._open(str(shard), framework="pt")
        return self._handles[shard]

    def __contains__(self, index: int) -> bool:
        return index in self._where

    def __getitem__(self, index: int) -> torch.Tensor:
        if index not in self._where:
            raise KeyError(f"no stored features for row index {index} in {self.path / FEATURES}. "
                           "Generate with --dataset_generation.store_features, or train online.")
        return self._handle(self._where[index]).get_tensor(str(index))


@functools.lru_cache(maxsize=8)
def _feature_store(path: str, stamp: float) -> FeatureStore:
    return FeatureStore(path)


def load_features(path: str | Path, index: int) -> torch.Tensor:
    """Stored features [T, F*H] of row `index` (shards opened once and cached)."""
    feats = Path(path) / FEATURES
    stamp = feats.stat().st_mtime if feats.is_dir() else 0.0
    return _feature_store(str(Path(path).resolve()), stamp)[index]


def feature_files(path: str | Path) -> list[Path]:
    """Feature shards of committed parts (a shard whose part file is missing is from a killed batch)."""
    root = Path(path)
    return [root / FEATURES / f"{p.name.removesuffix('.jsonl')}.safetensors" for p in part_files(root)
            if (root / FEATURES / f"{p.name.removesuffix('.jsonl')}.safetensors").is_file()]


def bytes_per_token(path: str | Path) -> float:
    """Stored feature bytes (shard files) per token of the rows that have features; 0 without features."""
    root = Path(path)
    shards = feature_files(root)
    if not shards:
        return 0.0
    store = FeatureStore(root)
    tokens = sum(len(r["input_ids"]) for r in iter_rows(root) if r["index"] in store)
    return sum(s.stat().st_size for s in shards) / max(tokens, 1)
