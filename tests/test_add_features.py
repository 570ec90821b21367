"""data_gen add_features: features added to a folder made without them equal those gen_dataset stores,
a killed run resumes part by part, and a folder of another base or other layers is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specforge_het.config import ConfigError
from specforge_het.data import store
from specforge_het.data.add_features import add_features
from specforge_het.data.generate import gen_dataset
from tests.test_data_gen import make_cfg, rows_of


def _features(path: Path) -> dict[int, torch.Tensor]:
    return {r["index"]: store.load_features(path, r["index"]) for r in rows_of(path)}


def test_added_features_equal_stored_ones_and_resume(tmp_path, prompts, base_dirs) -> None:
    stored = make_cfg(base_dirs["qwen3"], tmp_path / "stored", store_features=True, batch_size=2, part_size=2)
    gen_dataset(stored, [], prompts)
    plain = make_cfg(base_dirs["qwen3"], tmp_path / "plain", batch_size=2, part_size=2)
    gen_dataset(plain, [], prompts)
    assert not store.feature_files(tmp_path / "plain")
    assert rows_of(tmp_path / "plain") == rows_of(tmp_path / "stored")

    add_features(make_cfg(base_dirs["qwen3"], tmp_path / "unused"), [], str(tmp_path / "plain"))
    meta, want = store.read_meta(tmp_path / "plain"), store.read_meta(tmp_path / "stored")
    assert (meta["feature_layers"], meta["feature_dtype"]) == (want["feature_layers"], want["feature_dtype"])
    got, ref = _features(tmp_path / "plain"), _features(tmp_path / "stored")
    assert got.keys() == ref.keys() and len(got) >= 4
    for k in ref:  # same forward up to padding width: bfloat16 rounding at most
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape
        torch.testing.assert_close(got[k].float(), ref[k].float(), rtol=1.6e-2, atol=1.6e-2)

    # a killed run: one shard lost; the rerun redoes that part only and gives the same features
    shards = store.feature_files(tmp_path / "plain")
    kept = {s: s.stat().st_mtime_ns for s in shards[1:]}
    shards[0].unlink()
    add_features(make_cfg(base_dirs["qwen3"], tmp_path / "unused"), [], str(tmp_path / "plain"))
    assert all(s.stat().st_mtime_ns == t for s, t in kept.items())
    again = _features(tmp_path / "plain")
    for k in got:
        torch.testing.assert_close(again[k], got[k], rtol=0, atol=0)


def test_other_base_or_other_layers_are_refused(tmp_path, prompts, base_dirs) -> None:
    gen_dataset(make_cfg(base_dirs["qwen3"], tmp_path / "d", batch_size=2), [], prompts)
    with pytest.raises(ConfigError, match="generated with base"):
        add_features(make_cfg(base_dirs["llama"], tmp_path / "unused"), [], str(tmp_path / "d"))
    add_features(make_cfg(base_dirs["qwen3"], tmp_path / "unused"), [], str(tmp_path / "d"))
    other = make_cfg(base_dirs["qwen3"], tmp_path / "unused")
    other.modeling.feature_layers = [0, 1]
    with pytest.raises(ConfigError, match="already stores features"):
        add_features(other, [], str(tmp_path / "d"))
    with pytest.raises(ValueError, match="not a generated dataset"):
        add_features(make_cfg(base_dirs["qwen3"], tmp_path / "unused"), [], str(tmp_path / "nothing"))


def test_generating_more_into_a_folder_with_added_features(tmp_path, prompts, base_dirs) -> None:
    out = tmp_path / "d"
    gen_dataset(make_cfg(base_dirs["qwen3"], out, batch_size=2, part_size=2), [], prompts)
    add_features(make_cfg(base_dirs["qwen3"], tmp_path / "unused"), [], str(out))
    rows, meta = rows_of(out), store.read_meta(out)
    with pytest.raises(store.DatasetDirError, match=r"stores features .* --dataset_generation.store_features true"):
        gen_dataset(make_cfg(base_dirs["qwen3"], out, batch_size=2, part_size=2), [], prompts)
    assert store.read_meta(out) == meta  # the refusal loses nothing
    gen_dataset(make_cfg(base_dirs["qwen3"], out, store_features=True, batch_size=2, part_size=2), [], prompts)
    assert rows_of(out) == rows and store.read_meta(out)["feature_layers"] == meta["feature_layers"]
