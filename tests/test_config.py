"""Tests for the typed config: defaults, presets, command-line overrides, errors (config files: test_config_files.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import specforge_het.algorithms  # noqa: F401  (the algorithms register their config sections, as every CLI does)
from specforge_het.config import (
    Config,
    ConfigError,
    ModelingConfig,
    load_json_config,
    load_presets,
    resolve,
    save_json_config,
)

PRESETS_A = """
[small]
description = "small draft"
modeling.draft_hidden_size = 32
modeling.draft_num_layers = 2
inference.max_new_tokens = 100

[wide]
description = "wide draft"
modeling.draft_hidden_size = 96
inference.temperature = 0.5
"""

PRESETS_B = """
[greedy]
description = "greedy decoding"
inference.temperature = 0.0
inference.tree = "chain"
modeling.feature_layers = [1, 3]
"""


@pytest.fixture
def cfg_dir(tmp_path: Path) -> Path:
    d = tmp_path / "configs"
    d.mkdir()
    (d / "a.toml").write_text(PRESETS_A)
    (d / "b.toml").write_text(PRESETS_B)
    return d


@pytest.fixture
def presets(cfg_dir: Path) -> dict:
    return load_presets(cfg_dir)


# ---------------------------------------------------------------- defaults


def test_defaults_come_from_dataclasses() -> None:
    cfg, names, rest = resolve([])
    assert cfg == Config()
    assert names == [] and rest == []
    assert cfg.modeling == ModelingConfig()
    assert cfg.modeling.algorithm == "eagle_v3"
    assert cfg.modeling.vocab == "reduced"
    assert cfg.modeling.draft_vocab_size == 32000
    assert cfg.modeling.feature_layers == []
    assert cfg.training.learning_rate == 3e-4
    assert cfg.eagle_v3.ttt_steps == 7 and cfg.eagle_v2.feature_noise == 0.2  # the algorithms' own sections
    assert cfg.inference.max_new_tokens == 128
    assert cfg.inference.compare is False
    assert cfg.inference.chat_template is True
    assert cfg.dataset_generation.servers == []


def test_list_defaults_are_not_shared() -> None:
    a, b = ModelingConfig(), ModelingConfig()
    a.feature_layers.append(3)
    assert b.feature_layers == []
    assert ModelingConfig().feature_layers == []


def test_to_dict_has_all_sections() -> None:
    d = Config().to_dict()
    assert list(d)[:5] == ["modeling", "training", "dataset", "dataset_generation", "inference"]
    assert {"eagle_v2", "eagle_v3"} <= set(d)  # each algorithm's own section
    assert d["inference"]["max_new_tokens"] == 128


def test_algorithm_sections_and_their_old_keys(tmp_path: Path) -> None:
    cfg, _, _ = resolve(["--eagle_v3.ttt_steps", "3", "--eagle_v2.vloss_w=0.5"])
    assert (cfg.eagle_v3.ttt_steps, cfg.eagle_v2.vloss_w) == (3, 0.5)
    cfg, _, _ = resolve(["--training.ttt_steps", "4", "--training.feature_noise", "0"])  # deprecated aliases
    assert (cfg.eagle_v3.ttt_steps, cfg.eagle_v2.feature_noise) == (4, 0.0)
    assert not hasattr(cfg.training, "ttt_steps")
    with pytest.raises(ConfigError, match="eagle_v3.ttt_steps"):
        resolve(["--training.ttt_steps", "x"])
    with pytest.raises(ConfigError, match="Did you mean: eagle_v3"):
        resolve(["--eagle_v4.ttt_steps", "3"])
    old = tmp_path / "run_config.json"  # a run config saved before the knobs moved
    old.write_text(json.dumps({"training": {"ttt_steps": 2, "vloss_w": 0.3, "learning_rate": 0.01}}))
    cfg = load_json_config(old)
    assert (cfg.eagle_v3.ttt_steps, cfg.eagle_v2.vloss_w, cfg.training.learning_rate) == (2, 0.3, 0.01)
    save_json_config(cfg, tmp_path / "new")
    assert load_json_config(tmp_path / "new") == cfg


# ---------------------------------------------------------------- presets


def test_load_presets_reads_every_table(presets: dict) -> None:
    assert sorted(presets) == ["greedy", "small", "wide"]
    assert presets["small"]["modeling"]["draft_hidden_size"] == 32
    assert presets["greedy"]["modeling"]["feature_layers"] == [1, 3]


def test_presets_apply_in_command_line_order(presets: dict) -> None:
    cfg, names, _ = resolve(["--@small", "--@wide"], presets=presets)
    assert names == ["small", "wide"]
    assert cfg.modeling.draft_hidden_size == 96  # later wins
    assert cfg.modeling.draft_num_layers == 2  # only set by @small
    assert cfg.inference.max_new_tokens == 100
    assert cfg.inference.temperature == 0.5

    cfg, names, _ = resolve(["--@wide", "--@small"], presets=presets)
    assert names == ["wide", "small"]
    assert cfg.modeling.draft_hidden_size == 32
    assert cfg.inference.temperature == 0.5


def test_presets_from_two_files_stack(presets: dict) -> None:
    cfg, _, _ = resolve(["--@wide", "--@greedy"], presets=presets)
    assert cfg.inference.temperature == 0.0
    assert cfg.inference.tree == "chain"
    assert cfg.modeling.feature_layers == [1, 3]
    assert cfg.modeling.draft_hidden_size == 96


def test_presets_from_env_configs_dir(cfg_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECFORGE_HET_PRESETS", str(cfg_dir))
    assert {"greedy", "small", "wide"} <= set(load_presets())  # added to the shipped presets
    cfg, names, _ = resolve(["--@small", "--@wide"])
    assert names == ["small", "wide"]
    assert cfg.modeling.draft_hidden_size == 96
    assert cfg.modeling.draft_num_layers == 2
    cfg, _, _ = resolve(["--@wide", "--@small"])
    assert cfg.modeling.draft_hidden_size == 32


def test_preset_description_is_not_a_key(presets: dict) -> None:
    cfg, _, _ = resolve(["--@small"], presets=presets)
    assert not hasattr(cfg, "description")
    assert cfg.modeling.draft_hidden_size == 32


# ---------------------------------------------------------------- overrides


def test_override_with_space_and_equals() -> None:
    cfg, _, rest = resolve(["--modeling.draft_hidden_size", "48", "--inference.temperature=0.7"])
    assert cfg.modeling.draft_hidden_size == 48
    assert isinstance(cfg.modeling.draft_hidden_size, int)
    assert cfg.inference.temperature == 0.7
    assert isinstance(cfg.inference.temperature, float)
    assert rest == []


def test_float_field_accepts_integer_text() -> None:
    cfg, _, _ = resolve(["--training.learning_rate", "1"])
    assert cfg.training.learning_rate == 1.0
    assert isinstance(cfg.training.learning_rate, float)


def test_bare_bool_flag_followed_by_another_flag() -> None:
    cfg, _, rest = resolve(["--inference.compare", "--inference.max_new_tokens", "9"])
    assert cfg.inference.compare is True
    assert cfg.inference.max_new_tokens == 9
    assert rest == []


def test_bare_bool_flag_at_end_of_argv() -> None:
    cfg, _, rest = resolve(["--inference.max_new_tokens", "9", "--inference.compare"])
    assert cfg.inference.compare is True
    assert cfg.inference.max_new_tokens == 9
    assert rest == []


def test_bare_bool_flag_followed_by_fire_args() -> None:
    cfg, _, rest = resolve(["--inference.compare", "--prompt", "hi"])
    assert cfg.inference.compare is True
    assert rest == ["--prompt", "hi"]


def test_bool_flag_followed_by_positional_verb() -> None:
    cfg, _, rest = resolve(["--inference.compare", "show"])
    assert cfg.inference.compare is True
    assert rest == ["show"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--inference.compare", "false"], False),
        (["--inference.compare", "False"], False),
        (["--inference.compare", "0"], False),
        (["--inference.compare", "no"], False),
        (["--inference.compare=off"], False),
        (["--inference.compare", "true"], True),
        (["--inference.compare=yes"], True),
        (["--inference.chat_template", "false"], False),
    ],
)
def test_explicit_bool_values(argv: list[str], expected: bool) -> None:
    cfg, _, rest = resolve(argv)
    key = argv[0][2:].split("=")[0].split(".")[1]
    assert getattr(cfg.inference, key) is expected
    assert rest == []


def test_bool_bad_value_raises() -> None:
    with pytest.raises(ConfigError) as e:
        resolve(["--inference.compare=maybe"])
    assert "inference.compare" in str(e.value)
    assert "bool" in str(e.value)
    assert "'maybe'" in str(e.value)


@pytest.mark.parametrize("text", ["2,9,27", "[2,9,27]", "[2, 9, 27]", " 2, 9 ,27 "])
def test_list_parsing(text: str) -> None:
    cfg, _, _ = resolve(["--modeling.feature_layers", text])
    assert cfg.modeling.feature_layers == [2, 9, 27]
    assert all(type(x) is int for x in cfg.modeling.feature_layers)


def test_list_parsing_single_negative_and_empty() -> None:
    cfg, _, _ = resolve(["--modeling.feature_layers", "-1"])
    assert cfg.modeling.feature_layers == [-1]
    cfg, _, _ = resolve(["--modeling.feature_layers=[]"])
    assert cfg.modeling.feature_layers == []


def test_list_of_str_parsing() -> None:
    cfg, _, _ = resolve(["--dataset_generation.servers", "['h1:30000', 'h2:30001']"])
    assert cfg.dataset_generation.servers == ["h1:30000", "h2:30001"]
    cfg, _, _ = resolve(["--dataset_generation.servers", "h1:1,h2:2"])
    assert cfg.dataset_generation.servers == ["h1:1", "h2:2"]


def test_list_with_bad_item_raises() -> None:
    with pytest.raises(ConfigError) as e:
        resolve(["--modeling.feature_layers", "2,x,27"])
    assert "modeling.feature_layers" in str(e.value)
    assert "list[int]" in str(e.value)


def test_override_beats_preset_regardless_of_position(presets: dict) -> None:
    for argv in (
        ["--inference.max_new_tokens", "5", "--@small"],
        ["--@small", "--inference.max_new_tokens", "5"],
        ["--inference.max_new_tokens=5", "--@small", "--@wide"],
    ):
        cfg, _, _ = resolve(argv, presets=presets)
        assert cfg.inference.max_new_tokens == 5, argv
        assert cfg.modeling.draft_num_layers == 2, argv


def test_later_override_wins() -> None:
    cfg, _, _ = resolve(["--inference.max_new_tokens", "5", "--inference.max_new_tokens", "6"])
    assert cfg.inference.max_new_tokens == 6


# ---------------------------------------------------------------- errors


def test_unknown_section_suggests_nearest() -> None:
    with pytest.raises(ConfigError) as e:
        resolve(["--modelling.base_model", "x"])
    assert "modelling" in str(e.value)
    assert "Did you mean: modeling" in str(e.value)


def test_unknown_section_with_equals_suggests_nearest() -> None:
    with pytest.raises(ConfigError) as e:
        resolve(["--inferance.max_new_tokens=3"])
    assert "inference" in str(e.value)


def test_unknown_key_suggests_nearest() -> None:
    with pytest.raises(ConfigError) as e:
        resolve(["--inference.max_new_token", "5"])
    msg = str(e.value)
    assert "'inference.max_new_token'" in msg
    assert "inference.max_new_tokens" in msg


def test_unknown_preset_suggests_nearest(presets: dict) -> None:
    with pytest.raises(ConfigError) as e:
        resolve(["--@smal"], presets=presets)
    msg = str(e.value)
    assert "'@smal'" in msg
    assert "Did you mean: small" in msg


def test_wrong_type_names_key_type_and_value() -> None:
    with pytest.raises(ConfigError) as e:
        resolve(["--modeling.draft_num_layers", "two"])
    msg = str(e.value)
    assert "modeling.draft_num_layers" in msg
    assert "int" in msg
    assert "'two'" in msg
    assert msg == "Config key 'modeling.draft_num_layers' expects int, got 'two'."


def test_float_text_for_int_field_raises() -> None:
    with pytest.raises(ConfigError, match="modeling.draft_num_layers"):
        resolve(["--modeling.draft_num_layers", "2.5"])


def test_choice_field_bad_value() -> None:
    with pytest.raises(ConfigError) as e:
        resolve(["--modeling.algorithm", "eagle4"])
    msg = str(e.value)
    assert "modeling.algorithm" in msg
    assert "'eagle4'" in msg
    assert "eagle_v2" in msg and "eagle_v3" in msg


def test_choice_field_good_value() -> None:
    cfg, _, _ = resolve(["--modeling.algorithm", "eagle_v2", "--modeling.vocab", "foreign"])
    assert cfg.modeling.algorithm == "eagle_v2"
    assert cfg.modeling.vocab == "foreign"


def test_override_without_value_raises() -> None:
    with pytest.raises(ConfigError, match="modeling.draft_hidden_size"):
        resolve(["--modeling.draft_hidden_size"])


def test_preset_with_wrong_type_names_preset(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[broken]\nmodeling.draft_num_layers = "two"\n')
    presets = load_presets(tmp_path)
    with pytest.raises(ConfigError) as e:
        resolve(["--@broken"], presets=presets)
    msg = str(e.value)
    assert "@broken" in msg
    assert "modeling.draft_num_layers" in msg
    assert "'two'" in msg


def test_preset_with_float_for_int_raises(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[broken]\ninference.max_depth = 2.5\n")
    with pytest.raises(ConfigError, match="@broken"):
        resolve(["--@broken"], presets=load_presets(tmp_path))


def test_preset_with_unknown_key_names_preset(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[broken]\ninference.max_new_token = 3\n")
    with pytest.raises(ConfigError) as e:
        resolve(["--@broken"], presets=load_presets(tmp_path))
    assert "@broken" in str(e.value)
    assert "inference.max_new_tokens" in str(e.value)


def test_duplicated_preset_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "one.toml").write_text('[dup]\ndescription = "one"\ninference.max_depth = 2\n')
    (tmp_path / "two.toml").write_text('[dup]\ndescription = "two"\ninference.max_depth = 3\n')
    with pytest.raises(ConfigError) as e:
        load_presets(tmp_path)
    msg = str(e.value)
    assert "'dup'" in msg
    assert "one.toml" in msg and "two.toml" in msg


def test_invalid_toml_raises_config_error(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("[x\n")
    with pytest.raises(ConfigError, match="broken.toml"):
        load_presets(tmp_path)


# ---------------------------------------------------------------- nothing is evaluated

EVIL = "__import__('os').system('true')"


def test_str_field_keeps_code_literal() -> None:
    cfg, _, _ = resolve(["--modeling.base_model", EVIL])
    assert cfg.modeling.base_model == EVIL
    cfg, _, _ = resolve([f"--dataset.system_prompt={EVIL}"])
    assert cfg.dataset.system_prompt == EVIL


def test_int_field_does_not_evaluate_code() -> None:
    with pytest.raises(ConfigError) as e:
        resolve(["--modeling.draft_num_layers", EVIL])
    assert "modeling.draft_num_layers" in str(e.value)
    assert repr(EVIL) in str(e.value)
    with pytest.raises(ConfigError):
        resolve(["--modeling.draft_num_layers", "1+1"])


def test_list_field_does_not_evaluate_code() -> None:
    with pytest.raises(ConfigError):
        resolve(["--modeling.feature_layers", "[__import__('os').getpid()]"])


# ---------------------------------------------------------------- resolve


def test_resolve_returns_rest_for_fire(presets: dict) -> None:
    _, names, rest = resolve(["--prompt", "hi", "--@small", "--mtbench", "x:3"], presets=presets)
    assert names == ["small"]
    assert rest == ["--prompt", "hi", "--mtbench", "x:3"]
