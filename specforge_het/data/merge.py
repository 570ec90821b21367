"""`data_gen merge_datasets`: dataset folders (several ds_range runs, or parts of one) into a new folder.

The unit is a committed part: its rows, its skipped list and its features travel together. `ds_range`
selects the parts whose conversations all lie in [start, end); a part that straddles a bound is refused
(its rows and its feature shard would have to be split), naming the part and the nearest bound that fits.
Error-log records without an index (bad input lines) are copied whatever the range.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from specforge_het.data.store import (
    FEATURES,
    DatasetDirError,
    append_error,
    assemble,
    check_compatible,
    part_files,
    part_rows,
    part_skipped,
    read_errors,
    read_meta,
    write_meta,
)


def _expected(meta: dict) -> range:
    rng = meta.get("ds_range")
    return range(rng[0], rng[1]) if rng else range(meta.get("num_conversations", 0))


def _spans(indices: list[int], limit: int = 5) -> str:
    """[3, 4, 5, 9] -> '3..5, 9' (first `limit` runs)."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}..{b}" if b > a else str(a) for a, b in runs[:limit])
    return text + (", …" if len(runs) > limit else "")


def _part_records(part: Path) -> tuple[list[dict], list[dict]]:
    """(rows, skipped-for-good records) of one committed part."""
    return list(part_rows(part)), part_skipped(part)


def _nearest_edge(bound: int, spans: list[tuple[int, int]]) -> int:
    """The bound nearest `bound` that cuts no part (no part with lo < b <= hi); parts may interleave."""
    edges = {b for lo, hi in spans for b in (lo, hi + 1)}
    fits = [b for b in edges if not any(lo < b <= hi for lo, hi in spans)]
    return min(fits, key=lambda b: (abs(b - bound), b))


def select_parts(src: str, ds_range: range | None) -> list[Path]:
    """The committed parts of `src` inside `ds_range` (all of them without one); refuses a part across a bound."""
    parts = part_files(src)
    if ds_range is None:
        return parts
    indices = {part: [r["index"] for group in _part_records(part) for r in group] for part in parts}
    spans = [(min(ix), max(ix)) for ix in indices.values() if ix]
    chosen = []
    for part, ix in indices.items():
        inside = [i in ds_range for i in ix]
        if inside and all(inside):
            chosen.append(part)
        elif any(inside):
            name, bound = ("START", ds_range.start) if min(ix) < ds_range.start else ("END", ds_range.stop)
            raise DatasetDirError(f"{part} holds conversations {min(ix)}..{max(ix)}, across --ds_range's {name} {bound}; "
                                  f"a part is merged whole: the nearest {name} at a part edge is "
                                  f"{_nearest_edge(bound, spans)}.")
    return chosen


def _owners(chosen: dict[str, list[Path]], keep: range | None) -> tuple[dict[int, str], list[dict]]:
    """index -> source of every finished or skipped-for-good conversation in the chosen parts, and per-source
    counts. Raises on an id or index found twice."""
    owner: dict[str, str] = {}
    by_index: dict[int, str] = {}
    dups, counts = [], []
    for src, parts in chosen.items():
        rows: list[dict] = []
        skipped: list[dict] = []
        for part in parts:
            got_rows, got_skipped = _part_records(part)
            rows.extend(got_rows)
            skipped.extend(got_skipped)
        for r in rows + skipped:
            if r["id"] in owner or r["index"] in by_index:
                dups.append(f"{r['id']} (index {r['index']}: {owner.get(r['id'], by_index.get(r['index']))} and {src})")
            owner[r["id"]], by_index[r["index"]] = src, src
        counts.append({"source": src, "rows": len(rows), "skipped": len(skipped),
                       "tokens": sum(len(r["input_ids"]) for r in rows),
                       "ds_range": _clip(_expected(read_meta(src)), keep)})
    if dups:
        raise DatasetDirError(f"{len(dups)} duplicated conversation(s) across the sources, e.g. {'; '.join(dups[:5])}. "
                              "Merge sources generated over disjoint --dataset_generation.ds_range values.")
    return by_index, counts


def _clip(rng: range, keep: range | None) -> range:
    return rng if keep is None else range(max(rng.start, keep.start), max(min(rng.stop, keep.stop), keep.start))


def _copy_parts(chosen: dict[str, list[Path]], into: Path, keep: range | None) -> None:
    """The chosen parts (rows, skipped lists, features) and the error logs (of `keep`'s indices) into `into`."""
    for src, parts in chosen.items():
        for part in parts:
            stem = part.name.removesuffix(".jsonl")
            for file in (part, part.with_name(f"{stem}.skipped.json"), Path(src) / FEATURES / f"{stem}.safetensors"):
                if file.is_file():
                    (into / file.parent.name).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, into / file.parent.name / file.name)
        for err in read_errors(src):
            if keep is None or not isinstance(err.get("index"), int) or err["index"] in keep:
                append_error(into, {**err, "source": str(src)})


def merge_dirs(dest: str | Path, srcs: list[str], allow_gaps: bool = False,
               ds_range: tuple[int, int] | None = None) -> list[dict]:
    """Merge dataset folders into a new folder `dest`; returns per-source counts. Refuses duplicates,
    gaps (indices of the sources' ranges, or 0..n-1, or of `ds_range`, that no source finished) and
    incompatible metas. `ds_range` (start, end): only the parts inside it."""
    dest, metas = Path(dest), [read_meta(s) for s in srcs]
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DatasetDirError(f"merge destination '{dest}' exists and is not empty; give a new folder.")
    for s, m in zip(srcs[1:], metas[1:]):
        check_compatible(metas[0], m, (srcs[0], s))
    keep = range(*ds_range) if ds_range is not None else None
    chosen = {src: select_parts(src, keep) for src in srcs}
    by_index, counts = _owners(chosen, keep)
    full = range(max(m.get("num_conversations", 0) for m in metas))
    wanted = set(full).union(*(_expected(m) for m in metas)) if keep is None else \
        set().union(*(_clip(_expected(m), keep) for m in metas))  # the sources' own ranges, within ds_range
    missing = sorted(wanted - set(by_index))
    if missing and not allow_gaps:
        raise DatasetDirError(f"{len(missing)} conversation index(es) missing from every source: {_spans(missing)}. "
                              "Let the source run that owns them commit them (gen_dataset resumes in its own "
                              "folder and retries failed requests), or generate that range into a new folder, or "
                              "give --ds_range an END at the last committed part, or pass --allow_gaps.")
    tmp = dest.with_name(f".{dest.name}.tmp-merge-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _copy_parts(chosen, tmp, keep)
    covered = sorted(by_index)
    whole = bool(covered) and keep is None and covered == list(full)
    span = None if whole or not covered else [covered[0], covered[-1] + 1]
    if keep is not None:  # the range asked for, within the sources' own: a gap at its end stays visible
        span = [min(wanted | set(covered)), max(wanted | set(covered)) + 1] if wanted or covered else None
    write_meta(tmp, {**{k: v for k, v in metas[0].items() if k not in ("format", "version")},
                     "ds_range": span,
                     "merged_from": [str(s) for s in srcs]})
    assemble(tmp)
    dest.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():
        os.replace(item, dest / item.name)
    tmp.rmdir()
    return counts
