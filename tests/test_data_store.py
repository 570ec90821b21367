"""The dataset folder layout (store.py): atomic parts, resume bookkeeping, features, meta checks, merge refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specforge_het.data import merge, store
from specforge_het.data_gen import index_argv

BASE = {"name": "/a/base_llama_64", "model_type": "llama", "hidden_size": 8, "vocab_size": 300, "num_layers": 4}


def _meta(**kw) -> dict:
    meta = {"base": dict(BASE), "tokenizer": {"name_or_path": "x", "vocab_size": 300, "fingerprint": "f" * 16},
            "feature_layers": [2], "feature_dtype": "bfloat16", "hidden_size": 8, "source": "p.jsonl",
            "ds_range": None, "num_conversations": 4}
    meta.update(kw)
    return meta


def _row(i: int, n: int = 3) -> dict:
    return {"id": f"c{i}", "index": i, "input_ids": list(range(i, i + n)), "loss_mask": [0] + [1] * (n - 1)}


def _feats(rows: list[dict]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {str(r["index"]): torch.randn(len(r["input_ids"]), 8, generator=g).to(torch.bfloat16) for r in rows}


def _make(path: Path, indices: list[list[int]], skipped: tuple[int, ...] = (), **meta) -> Path:
    store.write_meta(path, _meta(**meta))
    for batch in indices:
        rows = [_row(i) for i in batch if i not in skipped]
        skips = [{"id": f"c{i}", "index": i, "reason": "too long: 9 tokens"} for i in batch if i in skipped]
        store.write_part(path, rows, skips, _feats(rows))
    store.assemble(path)
    return path


def test_parts_roundtrip_features_and_bytes_per_token(tmp_path: Path) -> None:
    out = _make(tmp_path / "d", [[2, 3], [0, 1]], skipped=(3,))
    ds, meta = store.load_dataset_dir(out)
    assert ds["index"] == [0, 1, 2] and ds["id"] == ["c0", "c1", "c2"]  # sorted by index
    assert ds.features["input_ids"].feature.dtype == "int32" and ds.features["loss_mask"].feature.dtype == "int8"
    assert meta["format"] == store.FORMAT and meta["feature_layers"] == [2]
    assert store.finished_ids(out) == {"c0", "c1", "c2"}
    assert store.done_indices(out) == {0, 1, 2, 3}  # skipped for good counts as done
    assert [p.name for p in store.part_files(out)] == ["part-0000000.jsonl", "part-0000002.jsonl"]
    f = store.load_features(out, 2)
    assert f.shape == (3, 8) and f.dtype == torch.bfloat16
    assert torch.equal(f, _feats([_row(2)])["2"])
    with pytest.raises(KeyError, match="no stored features for row index 3"):
        store.load_features(out, 3)
    shard_bytes = sum(p.stat().st_size for p in (out / "features").iterdir())
    assert store.bytes_per_token(out) == pytest.approx(shard_bytes / 9)
    assert 8 * 2 <= store.bytes_per_token(out) < 8 * 2 + 40  # bf16 [T, 8] + header


def test_leftover_temp_files_are_ignored_and_cleaned(tmp_path: Path) -> None:
    out = _make(tmp_path / "d", [[0, 1]])
    # What a write killed before its os.replace leaves behind: hidden temp files with torn content.
    torn = [out / "parts" / ".part-0000002.jsonl.tmp-4242", out / "features" / ".part-0000002.safetensors.tmp-4242",
            out / ".dataset.tmp-4242", out / ".dataset.old-4242"]
    torn[0].write_text('{"id": "c2", "index": 2, "input_ids": [1, 2')
    torn[1].write_bytes(b"\x00\x01garbage")
    torn[2].mkdir()
    torn[3].mkdir()
    # A features shard written just before a kill (its part file never came): not part of the dataset.
    store.atomic_write_bytes(out / "features" / "part-0000002.safetensors", b"\x00" * 16)
    assert store.finished_ids(out) == {"c0", "c1"}
    assert store.done_indices(out) == {0, 1}
    assert [p.name for p in store.feature_files(out)] == ["part-0000000.safetensors"]
    assert len(store.assemble(out)) == 2
    removed = store.clean_temp_files(out)
    assert sorted(p.name for p in removed) == sorted(p.name for p in torn)
    assert not any(p.exists() for p in torn)


def test_corrupt_committed_part_names_the_fix(tmp_path: Path) -> None:
    out = _make(tmp_path / "d", [[0]])
    (out / "parts" / "part-0000005.jsonl").write_text("{oops\n")
    with pytest.raises(store.DatasetDirError, match=r"part-0000005.jsonl:1: corrupt row .*Delete that part file"):
        store.finished_ids(out)


def test_all_skipped_gives_an_empty_dataset(tmp_path: Path) -> None:
    out = _make(tmp_path / "d", [[0, 1]], skipped=(0, 1))
    ds, _ = store.load_dataset_dir(out)
    assert len(ds) == 0 and store.done_indices(out) == {0, 1} and store.bytes_per_token(out) == 0.0


def test_errors_log_ignores_torn_line(tmp_path: Path) -> None:
    store.append_error(tmp_path, {"kind": "request_failed", "id": "c1"})
    with open(tmp_path / store.ERRORS, "a") as fh:
        fh.write('{"kind": "req')
    assert store.read_errors(tmp_path) == [{"kind": "request_failed", "id": "c1"}]


def test_missing_meta_and_unassembled_dir_are_clear(tmp_path: Path) -> None:
    with pytest.raises(store.DatasetDirError, match="meta.json is missing"):
        store.load_dataset_dir(tmp_path)
    store.write_meta(tmp_path, _meta())
    with pytest.raises(store.DatasetDirError, match="Rerun the same gen_dataset command"):
        store.load_dataset_dir(tmp_path)


@pytest.mark.parametrize("change, field", [
    ({"base": {**BASE, "hidden_size": 16}}, "base"),
    ({"tokenizer": {"name_or_path": "x", "vocab_size": 300, "fingerprint": "0" * 16}}, "tokenizer.fingerprint"),
    ({"feature_layers": [1, 2]}, "feature_layers"),
    ({"feature_dtype": "float16"}, "feature_dtype"),
])
def test_check_compatible_names_the_field_and_both_values(change: dict, field: str) -> None:
    a, b = _meta(), _meta(**change)
    with pytest.raises(store.DatasetDirError, match=rf"{field} differs: .* \(A\) vs .* \(B\)"):
        store.check_compatible(a, b)


def test_check_compatible_accepts_same_base_in_another_folder() -> None:
    store.check_compatible(_meta(), _meta(base={**BASE, "name": "/other/place/base_llama_64"}))
    store.check_compatible(_meta(feature_layers=[], feature_dtype="a"), _meta(feature_layers=[], feature_dtype="b"))


def test_tokenizer_fingerprint(tok_a, tok_b) -> None:
    fp = store.tokenizer_fingerprint(tok_a)
    assert len(fp) == 16 and fp == store.tokenizer_fingerprint(tok_a)
    assert fp != store.tokenizer_fingerprint(tok_b)


# ---------------------------------------------------------------- merge refusals

def test_merge_refuses_duplicates(tmp_path: Path) -> None:
    a = _make(tmp_path / "a", [[0, 1]], ds_range=[0, 2])
    b = _make(tmp_path / "b", [[1, 2, 3]], ds_range=[1, 4])
    with pytest.raises(store.DatasetDirError, match=r"1 duplicated conversation.*c1 \(index 1: .*a and .*b\)"):
        merge.merge_dirs(tmp_path / "m", [str(a), str(b)])
    assert not (tmp_path / "m").exists()


def test_merge_refuses_gaps(tmp_path: Path) -> None:
    a = _make(tmp_path / "a", [[0, 1]], ds_range=[0, 2], num_conversations=8)
    b = _make(tmp_path / "b", [[4, 5]], ds_range=[4, 6], num_conversations=8)
    with pytest.raises(store.DatasetDirError, match=r"4 conversation index\(es\) missing from every source: 2\.\.3, 6\.\.7"):
        merge.merge_dirs(tmp_path / "m", [str(a), str(b)])
    counts = merge.merge_dirs(tmp_path / "m", [str(a), str(b)], allow_gaps=True)
    assert [c["rows"] for c in counts] == [2, 2]
    assert store.load_dataset_dir(tmp_path / "m")[0]["index"] == [0, 1, 4, 5]


@pytest.mark.parametrize("change, field", [
    ({"base": {**BASE, "model_type": "qwen3"}}, "base"),
    ({"tokenizer": {"name_or_path": "x", "vocab_size": 300, "fingerprint": "0" * 16}}, "tokenizer.fingerprint"),
    ({"feature_layers": [3]}, "feature_layers"),
    ({"feature_dtype": "float32"}, "feature_dtype"),
])
def test_merge_refuses_mismatched_meta(tmp_path: Path, change: dict, field: str) -> None:
    a = _make(tmp_path / "a", [[0, 1]], ds_range=[0, 2])
    b = _make(tmp_path / "b", [[2, 3]], ds_range=[2, 4], **change)
    with pytest.raises(store.DatasetDirError, match=rf"{field} differs"):
        merge.merge_dirs(tmp_path / "m", [str(a), str(b)])


def test_merge_refuses_non_empty_destination(tmp_path: Path) -> None:
    a = _make(tmp_path / "a", [[0, 1, 2, 3]])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x").write_text("mine")
    with pytest.raises(store.DatasetDirError, match="exists and is not empty"):
        merge.merge_dirs(tmp_path / "m", [str(a)])


def test_merge_copies_parts_features_skips_and_errors(tmp_path: Path) -> None:
    a = _make(tmp_path / "a", [[0, 1]], ds_range=[0, 2])
    b = _make(tmp_path / "b", [[2, 3]], skipped=(3,), ds_range=[2, 4])
    store.append_error(b, {"kind": "skipped", "id": "c3"})
    merge.merge_dirs(tmp_path / "m", [str(a), str(b)])
    m = tmp_path / "m"
    ds, meta = store.load_dataset_dir(m)
    assert ds["index"] == [0, 1, 2] and meta["ds_range"] is None and meta["merged_from"] == [str(a), str(b)]
    assert store.done_indices(m) == {0, 1, 2, 3}
    assert torch.equal(store.load_features(m, 2), store.load_features(b, 2))
    assert [e["source"] for e in store.read_errors(m)] == [str(b)]
    assert not list(tmp_path.glob(".m.tmp-merge-*"))


def test_index_argv_makes_one_list() -> None:
    assert index_argv(["view", "d", "--index", "0", "1", "12"]) == ["view", "d", "--index=[0,1,12]"]
    assert index_argv(["view", "--index", "3", "d"]) == ["view", "--index=[3]", "d"]
    assert index_argv(["view", "--index=4,5", "d", "--x", "1"]) == ["view", "--index=[4,5]", "d", "--x", "1"]
    assert json.loads(index_argv(["--index", "7"])[0].split("=", 1)[1]) == [7]


def test_merge_selects_whole_parts_by_range(tmp_path: Path) -> None:
    """--ds_range keeps the parts inside [start, end), checks gaps there only, and refuses a part across a bound."""
    a = _make(tmp_path / "a", [[0, 1], [2, 3], [4, 5]], skipped=(3,), ds_range=[0, 6])
    store.append_error(a, {"kind": "failed", "id": "c5", "index": 5})
    merge.merge_dirs(tmp_path / "m", [str(a)], ds_range=(2, 4))
    ds, meta = store.load_dataset_dir(tmp_path / "m")
    assert ds["index"] == [2] and meta["ds_range"] == [2, 4] and store.done_indices(tmp_path / "m") == {2, 3}
    assert [p.name for p in store.part_files(tmp_path / "m")] == ["part-0000002.jsonl"]
    assert store.read_errors(tmp_path / "m") == []  # the error of index 5 lies outside
    assert torch.equal(store.load_features(tmp_path / "m", 2), store.load_features(a, 2))
    with pytest.raises(store.DatasetDirError, match=r"conversations 2\.\.3, across --ds_range's START 3.*edge is 2\."):
        merge.merge_dirs(tmp_path / "m2", [str(a)], ds_range=(3, 6))
    with pytest.raises(store.DatasetDirError, match=r"conversations 4\.\.5, across --ds_range's END 5.*edge is 4\."):
        merge.merge_dirs(tmp_path / "m2", [str(a)], ds_range=(0, 5))
    merge.merge_dirs(tmp_path / "m3", [str(a)], ds_range=(4, 8))  # past the source's own range (0..5): no gap
    assert store.load_dataset_dir(tmp_path / "m3")[1]["ds_range"] == [4, 6]


def test_merge_by_range_keeps_gaps_visible_and_reads_parts_safely(tmp_path: Path) -> None:
    """A range past the committed parts is a gap (refused, or kept in meta with --allow_gaps); interleaved parts
    (server mode) get a bound that cuts none; a corrupt part is named, with the fix."""
    a = _make(tmp_path / "a", [[0, 1], [2, 3]], ds_range=[0, 8])
    with pytest.raises(store.DatasetDirError, match=r"4 conversation index\(es\) missing.*4\.\.7.*--allow_gaps"):
        merge.merge_dirs(tmp_path / "m", [str(a)], ds_range=(0, 8))
    merge.merge_dirs(tmp_path / "m", [str(a)], ds_range=(0, 8), allow_gaps=True)
    assert store.load_dataset_dir(tmp_path / "m")[1]["ds_range"] == [0, 8]
    b = _make(tmp_path / "b", [[0, 2, 5], [1, 3], [4, 6]], ds_range=[0, 7])
    with pytest.raises(store.DatasetDirError, match=r"across --ds_range's END 6.*edge is 7\."):
        merge.merge_dirs(tmp_path / "m2", [str(b)], ds_range=(0, 6))
    part = store.part_files(a)[1]
    part.write_text(part.read_text() + "{torn\n")
    with pytest.raises(store.DatasetDirError, match=r"corrupt row.*Delete that part file"):
        merge.merge_dirs(tmp_path / "m3", [str(a)], ds_range=(0, 2))
