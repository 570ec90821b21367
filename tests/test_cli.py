"""Tests for the shared command-line entry point (config resolution + python-fire) and `show`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from specforge_het.cli import bind_config, config_table, run_cli
from specforge_het.config import Config

PRESETS = """
[fast]
description = "short answers"
inference.max_new_tokens = 11
inference.tree = "chain"

[slow]
description = "long answers"
inference.max_new_tokens = 999
"""


@pytest.fixture(autouse=True)
def presets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "configs"
    d.mkdir()
    (d / "p.toml").write_text(PRESETS)
    monkeypatch.setenv("SPECFORGE_HET_PRESETS", str(d))
    monkeypatch.setenv("COLUMNS", "250")  # rich: no folding of long values in the table
    return d


def _toy(calls: list):
    def fn(cfg, presets, prompt=None, n: int = 1):
        calls.append((cfg, presets, prompt, n))

    return fn


def test_run_cli_calls_function_with_config_and_flags() -> None:
    calls: list = []
    argv = ["--@fast", "--prompt", "hi", "--inference.temperature", "0.5", "--n", "3", "--modeling.draft_num_layers=2"]
    run_cli(_toy(calls), "toy", argv)
    assert len(calls) == 1
    cfg, presets, prompt, n = calls[0]
    assert isinstance(cfg, Config)
    assert presets == ["fast"]
    assert prompt == "hi"
    assert n == 3
    assert cfg.inference.max_new_tokens == 11
    assert cfg.inference.tree == "chain"
    assert cfg.inference.temperature == 0.5
    assert cfg.modeling.draft_num_layers == 2


def test_run_cli_presets_in_order_and_override_wins() -> None:
    calls: list = []
    run_cli(_toy(calls), "toy", ["--inference.top_k", "7", "--@fast", "--@slow"])
    cfg, presets, prompt, n = calls[0]
    assert presets == ["fast", "slow"]
    assert cfg.inference.max_new_tokens == 999
    assert cfg.inference.tree == "chain"
    assert cfg.inference.top_k == 7
    assert (prompt, n) == (None, 1)


def test_run_cli_dict_of_verbs() -> None:
    calls: list = []
    other: list = []
    verbs = {"go": _toy(calls), "other": _toy(other)}
    run_cli(verbs, "toy", ["go", "--@fast", "--n", "4"])
    assert other == []
    assert len(calls) == 1
    assert calls[0][1] == ["fast"]
    assert calls[0][3] == 4


def test_bind_config_hides_cfg_and_presets() -> None:
    import inspect

    calls: list = []
    cfg = Config()
    bound = bind_config(_toy(calls), cfg, ["x"])
    assert list(inspect.signature(bound).parameters) == ["prompt", "n"]
    bound(prompt="p", n=2)
    assert calls == [(cfg, ["x"], "p", 2)]


def test_show_prints_table(capsys: pytest.CaptureFixture) -> None:
    calls: list = []
    cfg = run_cli(_toy(calls), "toy", ["show", "--@fast", "--inference.top_k", "4242"])
    assert calls == []  # show does not run the command
    assert cfg.inference.top_k == 4242
    out = capsys.readouterr().out
    assert "inference.top_k" in out
    assert "4242" in out
    assert "modeling.draft_hidden_size" in out
    assert "@fast" in out
    assert "'chain'" in out


def test_config_table_rows() -> None:
    cfg = Config()
    cfg.inference.top_k = 9
    table = config_table(cfg, ["p"], sections=("inference",))
    keys = list(table.columns[0].cells)
    values = list(table.columns[1].cells)
    defaults = list(table.columns[2].cells)
    i = keys.index("inference.top_k")
    assert (values[i], defaults[i]) == ("9", "4")
    assert all(k.startswith("inference.") for k in keys)
    assert keys == [f"inference.{f.name}" for f in dataclasses.fields(cfg.inference)]  # one row per key, in order
    assert table.title == "resolved config (presets: @p)"


def test_config_error_exits_2(capsys: pytest.CaptureFixture) -> None:
    calls: list = []
    with pytest.raises(SystemExit) as e:
        run_cli(_toy(calls), "toy", ["--inference.max_new_tokens", "lots", "--prompt", "hi"])
    assert e.value.code == 2
    assert calls == []
    err = capsys.readouterr().err
    assert "config error" in err
    assert "inference.max_new_tokens" in err
    assert "'lots'" in err


def test_unknown_preset_exits_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        run_cli(_toy([]), "toy", ["--@fats"])
    assert e.value.code == 2
    assert "fast" in capsys.readouterr().err


# ---------------------------------------------------------------- the real command, in a subprocess


def _run_module(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SPECFORGE_HET_PRESETS"}
    env.update(COLUMNS="250", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "specforge_het.inference", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def test_inference_show_subprocess() -> None:
    res = _run_module("show", "--@smollm2", "--inference.max_new_tokens", "7")
    assert res.returncode == 0, res.stderr
    assert "smollm2-135m-instruct" in res.stdout
    assert "inference.max_new_tokens" in res.stdout
    line = next(x for x in res.stdout.splitlines() if "inference.max_new_tokens" in x)
    assert " 7 " in line and "128" in line  # value and default


def test_inference_config_error_subprocess() -> None:
    res = _run_module("--inference.max_new_tokn", "7", "--prompt", "hi")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "inference.max_new_tokens" in res.stderr


@pytest.mark.parametrize(("flag", "want"), [(["--shuffle", "false"], False), (["--shuffle=False"], False),
                                            (["--noshuffle"], False), (["--shuffle", "no"], False),
                                            (["--shuffle"], True), (["--shuffle", "true"], True), ([], True)])
def test_verb_bool_flags_read_like_config_values(flag: list, want: bool) -> None:
    """fire passes `--shuffle false` as the truthy string 'false'; a verb's bool flag must read it as False."""
    got: list = []

    def fn(cfg, presets, shuffle: bool = True):
        got.append(shuffle)

    run_cli({"go": fn}, "toy", ["go", *flag])
    assert got == [want]


def test_verb_bool_flag_refuses_other_values(capsys: pytest.CaptureFixture) -> None:
    def fn(cfg, presets, shuffle: bool = True):
        raise AssertionError("must not run")

    with pytest.raises(SystemExit) as e:
        run_cli({"go": fn}, "toy", ["go", "--shuffle", "maybe"])
    assert e.value.code == 2 and "--shuffle 'maybe': give true or false" in capsys.readouterr().err
