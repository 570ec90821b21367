"""bench.scaling: τ against training tokens from point folders (bench.json + the draft's log, or a train.log)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specforge_het.bench import scaling
from specforge_het.errors import ConfigError


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


def _checkpoint_point(root: Path, name: str, draft: Path, totals: tuple[float, float] | None, tau: float,
                      log_name: str = "trainer_state.json") -> None:
    (root / name).mkdir(parents=True)
    draft.mkdir(parents=True)
    history = [{"step": 12, "loss": 3.0}]
    if totals:
        history.append({"step": 24, "loss": 2.0, "train_loss_tokens_total": totals[0], "train_seq_tokens_total": totals[1]})
    history.append({"step": 24, "eval_loss": 2.5})
    (draft / log_name).write_text(json.dumps({"log_history": history} if log_name == "trainer_state.json" else history))
    summary = {"hf": {"tau": 1.0}, "ours-tree": {"tau": tau, "speedup_median": 1.2, "identical": 20, "compared": 20}}
    (root / name / "bench.json").write_text(json.dumps({"header": {"draft": str(draft)}, "summary": summary}))


def test_points_from_checkpoints_read_the_running_totals(tmp_path) -> None:
    pts = tmp_path / "pts"
    _checkpoint_point(pts, "s24", tmp_path / "run" / "checkpoint-24", (30_000.4, 40_000.0), 1.4)
    _checkpoint_point(pts, "sfinal", tmp_path / "run2", (90_000.0, 120_000.0), 1.8, log_name="training_log.json")
    _point(pts, "fitted", 100.0, 500, 1.3)  # a separate run's train.log beside them
    out = tmp_path / "scaling.json"
    scaling.main(str(pts), str(out))
    got = [(p["name"], p["answer_tokens"], p["seq_tokens"], p["tau"]) for p in json.loads(out.read_text())["points"]]
    assert got == [("s24", 30_000, 40_000, 1.4), ("fitted", 50_000, 100_000, 1.3), ("sfinal", 90_000, 120_000, 1.8)]


def test_a_later_stage_adds_the_tokens_of_the_draft_it_started_from(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # init_draft is relative to where training ran
    pts = tmp_path / "pts"
    _checkpoint_point(pts, "stage1", Path("run1"), (30_000.0, 40_000.0), 1.4, log_name="training_log.json")
    _checkpoint_point(pts, "stage2", Path("run2"), (10_000.0, 12_000.0), 1.6, log_name="training_log.json")
    (Path("run2") / "run_config.json").write_text(json.dumps({"modeling": {"init_draft": "run1"}}))
    scaling.main(str(pts), str(tmp_path / "x.json"))
    got = [(p["name"], p["answer_tokens"], p["seq_tokens"]) for p in json.loads((tmp_path / "x.json").read_text())["points"]]
    assert got == [("stage1", 30_000, 40_000), ("stage2", 40_000, 52_000)]
    (Path("run2") / "run_config.json").write_text(json.dumps({"modeling": {"init_draft": "gone"}}))
    with pytest.raises(FileNotFoundError, match="'gone', which is not here"):
        scaling.main(str(pts), str(tmp_path / "x.json"))


def test_checkpoint_without_totals_is_named(tmp_path) -> None:
    _checkpoint_point(tmp_path / "pts", "s1", tmp_path / "old", None, 1.2)
    with pytest.raises(ValueError, match="no running token totals"):
        scaling.main(str(tmp_path / "pts"), str(tmp_path / "x.json"))


def test_unfinished_or_missing_points_are_named(tmp_path) -> None:
    _point(tmp_path / "a", "s1", 100.0, 10, 1.2, log_line=False)
    with pytest.raises(ValueError, match="did not finish"):
        scaling.main(str(tmp_path / "a"), str(tmp_path / "x.json"))
    (tmp_path / "b" / "s2").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no bench.json"):
        scaling.main(str(tmp_path / "b"), str(tmp_path / "x.json"))
    with pytest.raises(ConfigError, match="no scaling points"):
        scaling.main(str(tmp_path / "none"), str(tmp_path / "x.json"))


def test_series_and_a_lineage_counted_from_a_replaced_folder(tmp_path, monkeypatch) -> None:
    """Two folders are two series; a lineage whose first init_draft was replaced by its own last stage
    (a shipped draft trained on from its predecessor) loops, is named, and counts from --count_from."""
    monkeypatch.chdir(tmp_path)
    _point(tmp_path / "fresh", "s24", 100.0, 500, 1.3)
    warm = tmp_path / "warm"
    _checkpoint_point(warm, "w1", Path("w1"), (30_000.0, 40_000.0), 1.5, log_name="training_log.json")
    _checkpoint_point(warm, "w2", Path("shipped"), (20_000.0, 25_000.0), 1.7, log_name="training_log.json")
    (Path("w1") / "run_config.json").write_text(json.dumps({"modeling": {"init_draft": "shipped"}}))
    (Path("shipped") / "run_config.json").write_text(json.dumps({"modeling": {"init_draft": "w1"}}))
    with pytest.raises(ValueError, match="form a loop"):
        scaling.main(f"{tmp_path / 'fresh'},{warm}", str(tmp_path / "x.json"))
    scaling.main((str(tmp_path / "fresh"), str(warm)), str(tmp_path / "x.json"), count_from=("shipped",))  # as fire parses a,b
    got = [(p["series"], p["name"], p["answer_tokens"], p["tau"])
           for p in json.loads((tmp_path / "x.json").read_text())["points"]]
    assert got == [("fresh", "s24", 50_000, 1.3), ("warm", "w1", 30_000, 1.5), ("warm", "w2", 50_000, 1.7)]
    assert (tmp_path / "x.png").stat().st_size > 1000


def test_trained_from_links_a_stage_whose_init_was_replaced(tmp_path, monkeypatch) -> None:
    """A stage trained from the shipped folder, which its own ship replaced since, counts its predecessor's
    tokens through --trained_from; without the link its recorded init_draft (in count_from) stops the count."""
    monkeypatch.chdir(tmp_path)
    warm = tmp_path / "warm"
    _checkpoint_point(warm, "w1", Path("w1"), (30_000.0, 40_000.0), 1.5, log_name="training_log.json")
    _checkpoint_point(warm, "w2", Path("w2"), (20_000.0, 25_000.0), 1.7, log_name="training_log.json")
    (Path("w2") / "run_config.json").write_text(json.dumps({"modeling": {"init_draft": "shipped"}}))
    Path("shipped").mkdir()

    def tokens(**kw) -> list[int]:
        scaling.main(str(warm), str(tmp_path / "x.json"), count_from="shipped", **kw)
        return [p["answer_tokens"] for p in json.loads((tmp_path / "x.json").read_text())["points"]]

    assert tokens() == [20_000, 30_000]
    assert tokens(trained_from="w2=w1") == [30_000, 50_000]
    with pytest.raises(ConfigError, match="give DRAFT=INIT"):
        tokens(trained_from="w2")
    with pytest.raises(FileNotFoundError, match="'nowhere' is not a folder"):
        tokens(trained_from="w2=nowhere")
    with pytest.raises(ConfigError, match="no point's lineage reaches: .*w9"):
        Path("w9").mkdir()
        tokens(trained_from="w9=w1")


def test_a_point_whose_draft_folder_is_gone_counts_from_its_tokens_json(tmp_path, monkeypatch) -> None:
    """Counting from the draft folders writes each point's tokens.json; with the folders gone (a fresh checkout
    commits no weights or logs) the points, and a later stage's chain through them, count the same; a folder
    that is there counts afresh; with neither, the error names the folder and the fix."""
    import shutil

    monkeypatch.chdir(tmp_path)
    warm = tmp_path / "warm"
    _checkpoint_point(warm, "w1", Path("w1"), (30_000.0, 40_000.0), 1.5, log_name="training_log.json")
    _checkpoint_point(warm, "w2", Path("w2"), (20_000.0, 25_000.0), 1.7, log_name="training_log.json")
    (Path("w2") / "run_config.json").write_text(json.dumps({"modeling": {"init_draft": "w1"}}))

    def tokens(**kw) -> list[tuple[int, int]]:
        scaling.main(str(warm), str(tmp_path / "x.json"), **kw)
        return [(p["answer_tokens"], p["seq_tokens"]) for p in json.loads((tmp_path / "x.json").read_text())["points"]]

    assert tokens() == [(30_000, 40_000), (50_000, 65_000)]
    assert json.loads((warm / "w2" / "tokens.json").read_text()) == {
        "draft": "w2", "answer_tokens": 50_000, "seq_tokens": 65_000, "chain": ["w2", "w1"], "linked": []}
    shutil.rmtree("w1")  # w2's chain reaches w1 through w1's tokens.json
    assert tokens() == [(30_000, 40_000), (50_000, 65_000)]
    shutil.rmtree("w2")
    assert tokens() == [(30_000, 40_000), (50_000, 65_000)]
    _checkpoint_point(tmp_path / "other", "w3", Path("w3"), (1_000.0, 2_000.0), 1.8, log_name="training_log.json")
    (Path("w3") / "run_config.json").write_text(json.dumps({"modeling": {"init_draft": "gone"}}))
    shutil.copytree(tmp_path / "other" / "w3", warm / "w3")
    with pytest.raises(FileNotFoundError, match="'gone', which is not here .*nor named by a point's tokens.json"):
        tokens()
    (Path("w3") / "run_config.json").write_text(json.dumps({"modeling": {"init_draft": "w2"}}))
    assert tokens() == [(30_000, 40_000), (50_000, 65_000), (51_000, 67_000)]  # w3 counted afresh on top of w2
    (warm / "w1" / "tokens.json").unlink()
    with pytest.raises(FileNotFoundError, match="draft folder 'w1' is gone, and no scaling point's tokens.json"):
        tokens()


def test_a_kept_count_follows_trained_from_links_and_refuses_a_contradiction(tmp_path, monkeypatch) -> None:
    """A stage trained from a folder since replaced (--trained_from) counts through kept counts once the folders
    are gone; options contradicting a kept chain, a link that no kept chain follows and two points naming one
    draft are refused, and a failed run rewrites no tokens.json."""
    import shutil

    monkeypatch.chdir(tmp_path)
    warm = tmp_path / "warm"
    _checkpoint_point(warm, "w1", Path("w1"), (30_000.0, 40_000.0), 1.5, log_name="training_log.json")
    _checkpoint_point(warm, "w2", Path("w2"), (20_000.0, 25_000.0), 1.7, log_name="training_log.json")
    _checkpoint_point(warm, "w3", Path("w3"), (5_000.0, 6_000.0), 1.8, log_name="training_log.json")
    Path("shipped").mkdir()
    (Path("w2") / "run_config.json").write_text(json.dumps({"modeling": {"init_draft": "shipped"}}))
    (Path("w3") / "run_config.json").write_text(json.dumps({"modeling": {"init_draft": "w2"}}))

    def tokens(**kw) -> list[int]:
        scaling.main(str(warm), str(tmp_path / "x.json"), count_from="shipped", **kw)
        return [p["answer_tokens"] for p in json.loads((tmp_path / "x.json").read_text())["points"]]

    assert tokens(trained_from="w2=w1") == [30_000, 50_000, 55_000]
    shutil.rmtree("w1")
    shutil.rmtree("w2")
    assert tokens(trained_from="w2=w1") == [30_000, 50_000, 55_000]  # the link is followed inside w2's kept chain
    before = {d.name: (d / "tokens.json").read_text() for d in warm.iterdir()}
    with pytest.raises(ConfigError, match="'w2' summed w2 \\+ w1, which --count_from / --trained_from now contradict"):
        tokens()  # without the link, w2 would have stopped at 'shipped'
    with pytest.raises(ConfigError, match="contradict"):
        scaling.main(str(warm), str(tmp_path / "x.json"), count_from="shipped,w1", trained_from="w2=w1")
    Path("w9").mkdir()
    with pytest.raises(ConfigError, match="no point's lineage reaches: .*w9"):
        tokens(trained_from="w2=w1,w9=w2")  # 'w2' gone but kept: a link may name it
    assert {d.name: (d / "tokens.json").read_text() for d in warm.iterdir()} == before
    shutil.copytree(warm / "w3", warm / "w3again")
    with pytest.raises(ConfigError, match="a second point counted from 'w3'"):
        tokens(trained_from="w2=w1")
    shutil.rmtree(warm / "w3again")
    (warm / "w2" / "tokens.json").write_text(json.dumps({"draft": "w2", "answer_tokens": 1, "seq_tokens": 1}))
    with pytest.raises(ConfigError, match="lacks chain, linked .*delete it and rerun"):
        tokens(trained_from="w2=w1")


def test_log_fit_recovers_a_log_linear_series_and_projects_the_target(tmp_path) -> None:
    """τ = 1 + 0.1·ln(tokens / 1e5) exactly: the fit gives b = 0.1, R² 1, and τ 1.5 at 1e5·e^5 tokens."""
    import math

    pts = [{"answer_tokens": int(1e5 * 2 ** i), "tau": 1 + 0.1 * math.log(2 ** i), "series": "s"} for i in range(4)]
    fit = scaling.log_fit(pts, (1.5,))
    assert fit is not None and fit["b"] == pytest.approx(0.1, abs=1e-4) and fit["r2"] == pytest.approx(1.0)
    assert fit["per_doubling"] == pytest.approx(0.1 * math.log(2), abs=1e-4)
    assert fit["tokens_for"]["1.5"] == pytest.approx(1e5 * math.exp(5), rel=1e-3)
    assert scaling.log_fit(pts[:2], (1.5,)) is None  # two points: no fit
    falling = [dict(p, tau=3 - p["tau"]) for p in pts]
    assert scaling.log_fit(falling, (2.5,))["tokens_for"] == {"2.5": None}  # never reached on a falling line
    flat = [dict(p, tau=2.0 + 1e-4 * i) for i, p in enumerate(pts)]
    assert scaling.log_fit(flat, (2.5,))["tokens_for"] == {"2.5": None}  # far past 1e15 tokens: no overflow
    for name, rate, tau in (("a", 100.0, 1.2), ("b", 200.0, 1.3), ("c", 400.0, 1.4)):
        _point(tmp_path / "pts", name, rate, 1000, tau)
    out = tmp_path / "scaling.json"
    scaling.main(str(tmp_path / "pts"), str(out), targets="1.6")
    fits = json.loads(out.read_text())["fits"]
    assert fits["pts"]["tokens_for"]["1.6"] == pytest.approx(400_000 * 4, rel=1e-3)  # +0.1 per doubling: two more
