"""Tests for config files: saved JSON configs (round trip, precedence, refusals), the shipped presets, split_argv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

import specforge_het.algorithms  # noqa: F401  (the algorithms register their config sections, as every CLI does)
from specforge_het.config import (
    Config,
    ConfigError,
    InferenceConfig,
    TrainingConfig,
    load_json_config,
    load_presets,
    resolve,
    save_json_config,
    split_argv,
)

REAL_CONFIGS = REPO / "specforge_het" / "presets"


# ---------------------------------------------------------------- saved JSON config


def _changed_config() -> Config:
    cfg = Config()
    cfg.modeling.base_model = "/some/base"
    cfg.modeling.draft_hidden_size = 48
    cfg.modeling.feature_layers = [1, 2, 3]
    cfg.training.learning_rate = 1e-5
    cfg.inference.compare = True
    cfg.inference.temperature = 0.3
    cfg.dataset_generation.servers = ["h:1"]
    return cfg


def test_saved_json_config_round_trip(tmp_path: Path) -> None:
    cfg = _changed_config()
    path = save_json_config(cfg, tmp_path / "run", presets=["small"])
    assert path == tmp_path / "run" / "run_config.json"
    data = json.loads(path.read_text())
    assert data["description"] == "resolved from presets ['small']"
    assert data["modeling"]["feature_layers"] == [1, 2, 3]

    loaded, names, rest = resolve(["--use_saved_json_config", str(path)])
    assert loaded == cfg
    assert names == [] and rest == []
    assert load_json_config(tmp_path / "run") == cfg  # a run folder works too
    loaded, _, _ = resolve([f"--use_saved_json_config={tmp_path / 'run'}"])
    assert loaded == cfg


def test_command_line_beats_saved_config(tmp_path: Path) -> None:
    path = save_json_config(_changed_config(), tmp_path)
    cfg, _, _ = resolve(["--inference.temperature", "0.9", "--use_saved_json_config", str(path)])
    assert cfg.inference.temperature == 0.9
    assert cfg.modeling.draft_hidden_size == 48  # the rest comes from the file
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "a.toml").write_text('[small]\nmodeling.draft_hidden_size = 32\n')
    cfg, _, _ = resolve(["--use_saved_json_config", str(path), "--@small"], presets=load_presets(tmp_path / "presets"))
    assert cfg.modeling.draft_hidden_size == 32  # presets apply after the saved file
    assert cfg.modeling.base_model == "/some/base"


def test_saved_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        resolve(["--use_saved_json_config", str(tmp_path / "nope.json")])


def test_saved_config_bad_json(tmp_path: Path) -> None:
    bad = tmp_path / "run_config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve(["--use_saved_json_config", str(bad)])


def test_saved_config_with_wrong_type_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "run_config.json"
    bad.write_text(json.dumps({"inference": {"max_new_tokens": "many"}}))
    with pytest.raises(ConfigError) as e:
        load_json_config(bad)
    assert str(bad) in str(e.value)
    assert "inference.max_new_tokens" in str(e.value)


def test_saved_config_flag_without_path() -> None:
    with pytest.raises(ConfigError, match="use_saved_json_config"):
        resolve(["--use_saved_json_config"])


# ---------------------------------------------------------------- the real presets (specforge_het/presets)


def _real_groups() -> dict[str, list[str]]:
    import tomllib

    return {p.stem: list(tomllib.loads(p.read_text())) for p in sorted(REAL_CONFIGS.glob("*.toml"))}


@pytest.fixture
def real_presets(monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.delenv("SPECFORGE_HET_PRESETS", raising=False)
    return load_presets()


def test_real_presets_all_resolve(real_presets: dict) -> None:
    assert real_presets == load_presets(REAL_CONFIGS)
    assert {"smollm2", "gemma3", "eagle_v2", "eagle_v3", "chain", "tree_cpu", "tree_gpu",
            "gemma3_smollm2_het", "gemma3_smollm2_het_init"} <= set(real_presets)
    for name, body in real_presets.items():
        assert isinstance(body.get("description"), str) and body["description"].strip(), name
        cfg, names, rest = resolve([f"--@{name}"])
        assert names == [name] and rest == []
        for section, values in body.items():
            if section == "description":
                continue
            assert values, (name, section)
            for key, value in values.items():
                assert getattr(getattr(cfg, section), key) == value, (name, section, key)


def test_real_preset_values(real_presets: dict) -> None:
    cfg, _, _ = resolve(["--@smollm2"])
    assert cfg.modeling.base_model == "smollm2-135m-instruct"
    cfg, _, _ = resolve(["--@gemma3"])
    assert cfg.modeling.base_model == "gemma3-270m"
    cfg, _, _ = resolve(["--@gemma3_smollm2_het_init"])
    m = cfg.modeling
    assert (m.base_model, m.algorithm, m.draft_family, m.vocab) == ("gemma3-270m", "eagle_v3", "llama", "foreign")
    assert (m.draft_hidden_size, m.draft_num_heads, m.draft_num_kv_heads, m.draft_head_dim) == (576, 9, 3, 64)
    assert m.draft_intermediate_size == 1536
    assert m.draft_rope_theta == 100000.0
    assert m.draft_tokenizer == "smollm2-135m-instruct"
    assert m.init_from == "smollm2-135m-instruct"
    assert m.init_layers == [15]
    cfg, _, _ = resolve(["--@tree_gpu"])
    assert (cfg.inference.tree, cfg.inference.max_depth, cfg.inference.top_k, cfg.inference.total_tokens) == (
        "dynamic", 6, 10, 60)


def test_real_base_and_algorithm_presets_stack(real_presets: dict) -> None:
    groups = _real_groups()
    assert groups["bases"] == ["smollm2", "gemma3"]
    assert groups["algorithms"] == ["eagle_v2", "eagle_v3"]
    for base in groups["bases"] + groups["pairs"]:
        for algo in groups["algorithms"]:
            for tree in groups["trees"]:
                cfg, names, _ = resolve([f"--@{base}", f"--@{algo}", f"--@{tree}"])
                assert names == [base, algo, tree]
                assert cfg.modeling.base_model == real_presets[base]["modeling"]["base_model"]
                assert cfg.modeling.algorithm == algo
                assert cfg.modeling.vocab == real_presets[algo]["modeling"]["vocab"]
                assert cfg.inference.tree == real_presets[tree]["inference"]["tree"]
    cfg, _, _ = resolve(["--@smollm2", "--@eagle_v2"])
    assert (cfg.modeling.base_model, cfg.modeling.algorithm, cfg.modeling.vocab) == (
        "smollm2-135m-instruct", "eagle_v2", "base")
    cfg, _, _ = resolve(["--@gemma3", "--@eagle_v3"])
    assert (cfg.modeling.base_model, cfg.modeling.vocab, cfg.modeling.draft_vocab_size) == (
        "gemma3-270m", "reduced", 32000)
    assert cfg.training == TrainingConfig()
    assert cfg.eagle_v3.ttt_steps == 7  # the preset sets the default
    assert cfg.inference == InferenceConfig()


# ---------------------------------------------------------------- split_argv


def test_split_argv_leaves_fire_args_in_order() -> None:
    argv = ["show", "--@a", "--prompt", "hi", "--modeling.draft_hidden_size", "48", "--mtbench", "x:3",
            "--inference.compare", "--@b", "pos", "--outfile=o.jsonl", "--inference.top_k=2"]
    presets, overrides, saved, rest = split_argv(argv)
    assert presets == ["a", "b"]
    assert overrides == [("modeling.draft_hidden_size", "48"), ("inference.compare", "true"), ("inference.top_k", "2")]
    assert saved is None
    assert rest == ["show", "--prompt", "hi", "--mtbench", "x:3", "pos", "--outfile=o.jsonl"]


def test_split_argv_saved_config() -> None:
    presets, overrides, saved, rest = split_argv(["--use_saved_json_config", "run/x.json", "--prompt", "p.q"])
    assert (presets, overrides, saved, rest) == ([], [], "run/x.json", ["--prompt", "p.q"])
    assert split_argv(["--use_saved_json_config=a.json"])[2] == "a.json"
