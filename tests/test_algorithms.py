"""The algorithm registry and the one draft loader: every algorithm folder has the same file set and is
registered; draft folders dispatch on config.json's "algorithm"; today's folders (the shipped ones too)
load unchanged; a newer format version or an unknown algorithm is refused with a clear error."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import specforge_het
import specforge_het.algorithms as algorithms
from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.io import (
    FORMAT_VERSION,
    DraftFolderError,
    build_from_config,
    load_draft,
    read_draft_config,
    save_draft,
    vocab_from_state,
)
from specforge_het.algorithms.registry import DraftAlgorithm, get_algorithm, register
from specforge_het.assets import SHIPPED_DRAFTS
from specforge_het.models.draft import DraftModel
from tests.conftest import draft_modeling

ALGO_DIR = Path(algorithms.__file__).parent
FILE_SET = {"__init__.py", "config.py", "model.py", "loss.py"}
SHIPPED = sorted(p.name for p in SHIPPED_DRAFTS.iterdir() if (p / "config.json").is_file())


def test_every_algorithm_is_one_folder_with_the_same_files():
    assert {"eagle_v2", "eagle_v3"} <= set(algorithms.algorithm_names())
    for name in algorithms.algorithm_names():
        assert FILE_SET <= {p.name for p in (ALGO_DIR / name).iterdir()}, name
        algo = get_algorithm(name)
        assert algo.name == name
        if algo.uses_draft_folder:  # standalone: the draft is a whole pretrained LM, no draft-folder class
            assert issubclass(algo.draft_cls, DraftModel)
        assert algo.Config().__dataclass_fields__  # its own knobs


def test_registry_refuses_twice_and_suggests_names():
    with pytest.raises(ValueError, match="registered twice"):
        register("eagle_v3")(type("Again", (DraftAlgorithm,), {}))
    with pytest.raises(ValueError, match="Did you mean eagle_v3"):
        get_algorithm("eagle_v4")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_draft_folders_load_unchanged(name):
    """Each shipped folder's tensors are exactly the draft class's (names, shapes): strict load."""
    cfg = read_draft_config(name)
    folder = SHIPPED_DRAFTS / name
    assert json.loads((folder / "config.json").read_text())["format_version"] == FORMAT_VERSION
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    draft = build_from_config(cfg, vocab_from_state(cfg, state))
    assert type(draft) is get_algorithm(cfg.algorithm).draft_cls
    own = draft.state_dict()
    assert {k: tuple(v.shape) for k, v in own.items()} == {k: tuple(v.shape) for k, v in state.items()}
    draft.load_state_dict(state, strict=True)


@pytest.mark.parametrize("algorithm,vocab", [("eagle_v2", "base"), ("eagle_v3", "reduced")])
def test_save_load_dispatches_on_the_algorithm(llama_base, tmp_path, algorithm, vocab):
    draft = build_draft(draft_modeling(algorithm=algorithm, vocab=vocab, family="llama", draft_vocab_size=100),
                        llama_base).eval()
    loaded = load_draft(save_draft(draft, tmp_path / "d"), llama_base).eval()
    assert type(loaded) is type(draft)
    for k, v in draft.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_newer_format_and_unknown_algorithm_are_refused(llama_base, tmp_path):
    draft = build_draft(draft_modeling(family="llama", draft_vocab_size=100), llama_base)
    folder = save_draft(draft, tmp_path / "d")
    data = json.loads((folder / "config.json").read_text())
    for change, match in (({"format_version": FORMAT_VERSION + 1}, "Upgrade specforge_het"),
                          ({"algorithm": "medusa"}, "algorithm 'medusa'"),
                          ({"format": "other"}, "not a specforge_het.draft")):
        bad = tmp_path / f"bad{len(match)}"
        shutil.copytree(folder, bad)
        (bad / "config.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(DraftFolderError, match=match):
            load_draft(bad, llama_base)


def test_no_algorithm_name_is_compared_outside_the_registry():
    """Code outside algorithms/ asks the algorithm (registry, its attributes, isinstance on its draft class)."""
    names, pkg, found = set(algorithms.algorithm_names()), Path(specforge_het.__file__).parent, []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg).as_posix()
        if rel.startswith("algorithms/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                sides += [e for n in node.comparators if isinstance(n, (ast.Tuple, ast.List, ast.Set)) for e in n.elts]
                found += [f"{rel}:{node.lineno} {n.value!r}" for n in sides if isinstance(n, ast.Constant) and n.value in names]
    assert not found


def test_eagle_v3_refuses_a_negative_reachable_k():
    from specforge_het.algorithms.eagle_v3 import EagleV3Config
    from specforge_het.errors import ConfigError

    algorithm = get_algorithm("eagle_v3")
    algorithm.check(EagleV3Config(reachable_k=4))
    with pytest.raises(ConfigError, match="reachable_k must be >= 0"):
        algorithm.check(EagleV3Config(reachable_k=-1))
