"""bench.scaling: τ against training tokens from point folders (train.log + bench.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specforge_het.bench import scaling


def _point(root: Path, name: str, loss_rate: float, secs: int, tau: float, log_line: bool = True) -> None:
    d = root / name
    d.mkdir(parents=True)
    line = f"throughput: {loss_rate * 2:.1f} trained tokens/s ({loss_rate:.1f} loss tokens/s) over {secs} s of training"
    (d / "train.log").write_text("step 10 ...\n" + (line if log_line else "") + "\n")
    summary = {"hf": {"tau": 1.0}, "ours-tree": {"tau": tau, "speedup_median": 1.1, "identical": 20, "compared": 20}}
    (d / "bench.json").write_text(json.dumps({"summary": summary}))


def test_points_sorted_by_tokens_with_their_tau(tmp_path) -> None:
    _point(tmp_path / "pts", "s96", 100.0, 2000, 1.9)
    _point(tmp_path / "pts", "s24", 100.0, 500, 1.5)
    out = tmp_path / "scaling.json"
    scaling.main(str(tmp_path / "pts"), str(out))
    got = json.loads(out.read_text())["points"]
    assert [(p["name"], p["answer_tokens"], p["seq_tokens"], p["tau"]) for p in got] == [
        ("s24", 50_000, 100_000, 1.5), ("s96", 200_000, 400_000, 1.9)]
    assert out.with_suffix(".png").stat().st_size > 1000


def test_unfinished_or_missing_points_are_named(tmp_path) -> None:
    _point(tmp_path / "a", "s1", 100.0, 10, 1.2, log_line=False)
    with pytest.raises(ValueError, match="did not finish"):
        scaling.main(str(tmp_path / "a"), str(tmp_path / "x.json"))
    (tmp_path / "b" / "s2").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no train.log"):
        scaling.main(str(tmp_path / "b"), str(tmp_path / "x.json"))
    with pytest.raises(SystemExit, match="no scaling points"):
        scaling.main(str(tmp_path / "none"), str(tmp_path / "x.json"))
