"""Presets are package data: found with importlib.resources from a wheel install, plus user folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from specforge_het.config import Config, apply_preset
from specforge_het.errors import ConfigError
from specforge_het.presets import USER_ENV, load_presets, preset_files

SHIPPED = ["algorithms.toml", "bases.toml", "hardware.toml", "pairs.toml", "trees.toml"]


@pytest.fixture(autouse=True)
def no_user_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(USER_ENV, raising=False)


def test_shipped_files_are_package_data() -> None:
    files = preset_files()
    assert [p.name for p in files] == SHIPPED
    assert all(Path(str(p)).parent == REPO / "specforge_het" / "presets" for p in files)
    assert {"smollm2", "gemma3", "eagle_v2", "eagle_v3", "chain", "tree_cpu", "gpu"} <= set(load_presets())


def test_user_folders_add_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "mine.toml").write_text('[short]\ndescription = "short"\ninference.max_new_tokens = 9\n')
    (b / "more.toml").write_text('[long]\ndescription = "long"\ninference.max_new_tokens = 900\n')
    monkeypatch.setenv(USER_ENV, f"{a}{os.pathsep}{b}")
    presets = load_presets()
    assert {"short", "long", "smollm2"} <= set(presets)
    cfg = Config()
    for name in ("smollm2", "short"):
        apply_preset(cfg, name, presets)
    assert (cfg.modeling.base_model, cfg.inference.max_new_tokens) == ("smollm2-135m-instruct", 9)
    assert sorted(load_presets(a)) == ["short"]  # one folder alone


def test_user_preset_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(USER_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="not a folder"):
        load_presets()
    (tmp_path / "dup.toml").write_text('[smollm2]\ndescription = "mine"\n')
    monkeypatch.setenv(USER_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match=r"(?s)'smollm2' is defined twice: .*bases.toml and .*dup.toml"):
        load_presets()
    (tmp_path / "dup.toml").write_text("[broken\n")
    with pytest.raises(ConfigError, match="dup.toml: invalid TOML"):
        load_presets()


CHECK_INSTALL = """
import sys
from pathlib import Path

import specforge_het
from specforge_het.config import resolve
from specforge_het.presets import preset_files

assert Path(specforge_het.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), specforge_het.__file__
print(" ".join(p.name for p in preset_files()))
cfg, names, _ = resolve(["--@smollm2", "--@eagle_v3"])  # config.py reads the package presets
print(cfg.modeling.base_model, cfg.modeling.algorithm)
"""


def _copy_source(into: Path) -> Path:
    """pyproject.toml, README.md and the package, without caches, build leftovers and the shipped drafts
    (67 MB of weights the wheel would copy and zip; presets are what this test checks)."""
    src = into / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "specforge_het", src / "specforge_het",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.safetensors", "*.pt"))
    return src


def test_presets_resolve_from_a_wheel_install(tmp_path: Path) -> None:
    """Build a wheel, install it alone into a folder, and resolve presets there with nothing else on
    the path (python -S: no site-packages, so not the editable install of this repository)."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                    str(_copy_source(tmp_path))], check=True, env=env, cwd=tmp_path, timeout=300)
    wheel = next((tmp_path / "dist").glob("specforge_het-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, env=env,
                   cwd=tmp_path, timeout=300)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SPECFORGE_HET"))}
    res = subprocess.run([sys.executable, "-S", "-c", CHECK_INSTALL, str(site)], capture_output=True, text=True,
                         cwd=tmp_path, env={**clean, "PYTHONPATH": str(site)}, timeout=120)
    assert res.returncode == 0, res.stderr
    files, resolved = res.stdout.splitlines()
    assert files.split() == SHIPPED
    assert resolved == "smollm2-135m-instruct eagle_v3"
