"""`data_gen add_features DIR`: store base features for a dataset folder made without them.

Offline training (`--training.mode offline`) reads features stored next to the rows, so the
base runs once over the data instead of once per epoch. `gen_dataset --dataset_generation.store_features`
stores them while generating; this verb adds them afterwards, part by part, in the same format
(one safetensors shard per committed part, `features/part-<first>.safetensors`, key = row index).
A killed run resumes: parts that already have their shard are skipped. The layers are the
algorithm's (or `--modeling.feature_layers`), plus the final normed state (-1) for the targets.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from specforge_het.config import Config, ConfigError
from specforge_het.data import store

console = Console(stderr=True)


def _check_base(meta: dict, engine, path: Path) -> None:
    """Refuse a folder made with another base or tokenizer (the features would be meaningless)."""
    got = engine.describe()
    for key in ("name", "hidden_size", "num_layers", "vocab_size"):
        want = meta.get("base", {}).get(key)
        if want is not None and want != got.get(key):
            raise ConfigError(f"dataset '{path}' was generated with base '{meta['base'].get('name')}' ({key} {want}), "
                              f"but the base given is '{got.get('name')}' ({key} {got.get(key)}). "
                              "Give the same base (its preset or --modeling.base_model).")
    fp = meta.get("tokenizer", {}).get("fingerprint")
    if fp and fp != store.tokenizer_fingerprint(engine.tokenizer):
        raise ConfigError(f"dataset '{path}' was tokenised by another tokenizer than this base's; give the same base.")


def _check_layers(meta: dict, layers: list[int], dtype: str, path: Path) -> None:
    old, old_dtype = meta.get("feature_layers") or [], meta.get("feature_dtype")
    if old and (old != layers or old_dtype != dtype):
        raise ConfigError(f"dataset '{path}' already stores features of layers {old} in {old_dtype}; asked for "
                          f"{layers} in {dtype}. Use the same --modeling.feature_layers and "
                          "--dataset_generation.feature_dtype, or copy the folder without features/.")


def add_features(cfg: Config, presets: list[str], path: str) -> str:
    """Store base features for every committed part of the dataset folder PATH that lacks them."""
    from specforge_het.data.generate import feature_layers_for, make_engine

    root = Path(path)
    meta = store.read_meta(root)  # a clear error when PATH is not a dataset folder
    if not store.part_files(root):
        raise ConfigError(f"dataset '{path}' has no committed parts yet: run gen_dataset first.")
    cfg.dataset_generation.store_features = True
    engine = make_engine(cfg)
    _check_base(meta, engine, root)
    layers = feature_layers_for(cfg, engine.num_layers)
    dtype = cfg.dataset_generation.feature_dtype
    _check_layers(meta, layers, dtype, root)
    store.write_meta(root, {**{k: v for k, v in meta.items() if k not in ("format", "version")},
                            "feature_layers": layers, "feature_dtype": dtype})
    todo = [p for p in store.part_files(root) if not (root / store.FEATURES / f"{_stem(p)}.safetensors").is_file()]
    console.print(f"add_features: {len(todo)} of {len(store.part_files(root))} parts need features "
                  f"(layers {layers}, {dtype})")
    for part in todo:
        _one_part(engine, root, part, layers)
    return str(root)


def _stem(part: Path) -> str:
    return part.name.removesuffix(".jsonl")


def _one_part(engine, root: Path, part: Path, layers: list[int]) -> None:
    from safetensors.torch import save

    rows = [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
    rows = sorted(rows, key=lambda r: len(r["input_ids"]), reverse=True)  # similar lengths share a forward
    t0 = time.perf_counter()
    feats = engine.features(rows, layers)
    blob = save({k: v.contiguous() for k, v in feats.items()})
    store.atomic_write_bytes(root / store.FEATURES / f"{_stem(part)}.safetensors", blob)
    tokens = sum(len(r["input_ids"]) for r in rows)
    secs = time.perf_counter() - t0
    console.print(f"  {_stem(part)}: {len(rows)} rows, {tokens} tokens, {tokens / secs:.0f} tok/s")
