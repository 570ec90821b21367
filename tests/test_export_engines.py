"""Export facts that decide whether an engine loads a folder and runs it as trained: context length and
rope from the base, vLLM's EAGLE-3 model list, an engine-loadable verifier name, the vLLM release that
keeps a draft's own embedding, capturable feature layers, SGLang folders without target_hidden_size,
eagle-llm's fixed rope theta and the serve hints."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from specforge_het import assets
from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.io import save_draft
from specforge_het.config import ModelingConfig
from specforge_het.export import ExportError, ExportWarning, check_folder, export_draft, import_folder, to_state_dict
from specforge_het.export import __main__ as cli
from specforge_het.export.contract import check_contract, describe_tensors
from specforge_het.models.base import BaseModel
from specforge_het.testing import save_tiny_base

IDS = torch.tensor([[5, 17, 33, 120, 7, 250, 42]])
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
V3 = dict(algorithm="eagle_v3", draft_family="llama", vocab="reduced", draft_vocab_size=120, feature_layers=[1, 2, 3])
V2 = dict(algorithm="eagle_v2", draft_family="llama", vocab="base", draft_first_input_norm=False)


def draft_for(base, seed=0, **spec):
    return build_draft(ModelingConfig(**spec), base, seed=seed).eval()


@torch.no_grad()
def logits(draft, base, ids=IDS):
    feats = base.features(ids, tuple(draft.cfg.feature_layers)).features
    return draft.logits(draft(ids, draft.input_from_base(ids, feats), torch.arange(ids.shape[1])[None]))


def read_config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def layer_config(config: dict, fmt: str) -> dict:
    return config["transformer_layer_config"] if fmt == "speculators" else config


def no_export_warnings(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportWarning)
        return fn(*args, **kw)


@pytest.fixture(scope="module")
def long_bases(tmp_path_factory, tok_a):
    """Tiny bases with long contexts: Llama with llama3 rope scaling (131072), Qwen3 (40960)."""
    root = tmp_path_factory.mktemp("long_bases")
    return {
        "llama3": BaseModel.load(save_tiny_base(root / "llama3", "llama", tok_a, max_position_embeddings=131072,
                                                rope_scaling=dict(LLAMA3))),  # (HF adds rope_theta to the dict)
        "qwen3": BaseModel.load(save_tiny_base(root / "qwen3", "qwen3", tok_a, max_position_embeddings=40960)),
    }


# ================================================================ 1. context and rope from the base

@pytest.mark.parametrize("fmt", ["sglang-eagle3", "speculators", "sglang-eagle"])
def test_context_and_llama3_rope_come_from_the_base(long_bases, tmp_path, fmt):
    base = long_bases["llama3"]
    draft = draft_for(base, seed=1, **(V2 if fmt == "sglang-eagle" else V3))
    assert draft.cfg.rope_scaling == LLAMA3 and draft.cfg.max_position_embeddings == 131072  # inherited at build
    draft.cfg.max_position_embeddings = 32768  # as drafts were saved before: export must not copy it
    folder = no_export_warnings(export_draft, draft, tmp_path / fmt, fmt)
    layer = layer_config(read_config(folder), fmt)
    assert (layer["max_position_embeddings"], layer["rope_theta"], layer["rope_scaling"]) == (131072, 10000.0, LLAMA3)
    back = import_folder(folder, fmt, base)
    assert back.cfg.rope_scaling == LLAMA3
    assert torch.allclose(logits(back, base), logits(draft, base), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["sglang-eagle3", "speculators"])
def test_qwen3_context_is_written(long_bases, tmp_path, fmt):
    draft = draft_for(long_bases["qwen3"], **V3)
    layer = layer_config(read_config(export_draft(draft, tmp_path / fmt, fmt)), fmt)
    assert (layer["max_position_embeddings"], layer["rope_scaling"]) == (40960, None)


def test_eagle_format_takes_the_context_but_refuses_rope_scaling(long_bases, tmp_path):
    base = long_bases["llama3"]
    with pytest.raises(ExportError, match="'llama3' scaling") as err:
        export_draft(draft_for(base, **V2), tmp_path / "scaled", "eagle")
    assert "--modeling.draft_rope_theta" in str(err.value)
    plain = draft_for(base, **V2, draft_rope_theta=10000.0)  # an explicit theta: plain rope
    assert plain.cfg.rope_scaling is None
    with pytest.warns(ExportWarning, match="plain rope"):  # the base's scaling is not the draft's: said, not copied
        folder = export_draft(plain, tmp_path / "eagle", "eagle")
    config = read_config(folder)
    assert (config["max_position_embeddings"], config["rope_scaling"]) == (131072, None)
    assert torch.allclose(logits(import_folder(folder, "eagle", base), base), logits(plain, base), rtol=0, atol=1e-6)


# ================================================================ 2. vLLM's EAGLE-3 target list

def test_speculators_refuses_a_base_vllm_runs_no_eagle3_for(bases, tmp_path):
    gemma = draft_for(bases["gemma3"], **V3, draft_hidden_size=48)
    with pytest.raises(ExportError) as err:
        export_draft(gemma, tmp_path / "refused", "speculators")
    msg = str(err.value)
    assert "'gemma3_text'" in msg and "['llama', 'qwen', 'minicpm', 'gpt_oss'" in msg and "--force" in msg
    assert not (tmp_path / "refused").exists()
    with pytest.warns(ExportWarning, match="--force"):
        folder = export_draft(gemma, tmp_path / "forced", "speculators", force=True)
    assert check_folder(folder, "speculators") == []
    for family in ("llama", "qwen3"):  # model types on the list
        no_export_warnings(to_state_dict, draft_for(bases[family], **V3, draft_hidden_size=48), "speculators")


def test_cli_force(bases, tmp_path, capsys):
    folder = save_draft(draft_for(bases["gemma3"], **V3, draft_hidden_size=48), tmp_path / "draft")
    with pytest.raises(SystemExit) as err:
        cli.main([str(folder), str(tmp_path / "no"), "--format", "speculators"])
    assert err.value.code == 2 and "pass --force" in capsys.readouterr().err
    cli.main([str(folder), str(tmp_path / "yes"), "--format", "speculators", "--force"])
    out = capsys.readouterr().err
    assert "export warning" in out and "vLLM would refuse" in out and "contract check passed" in out


# ================================================================ 3. the verifier engines load

@pytest.fixture
def alias_base(llama_base):
    """The tiny Llama base under an embedded alias' name (no GGUF needed for naming facts)."""
    return BaseModel(llama_base.model, llama_base.tokenizer, name="smollm2-135m-instruct")


def test_an_embedded_alias_is_written_as_its_original_hub_id(alias_base):
    draft = draft_for(alias_base, **V3)
    with pytest.warns(ExportWarning, match="embedded alias") as rec:
        config, _ = to_state_dict(draft, "speculators")
    assert config["speculators_config"]["verifier"]["name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "specforge_het/assets.py" in str(rec[0].message) and "--verifier" in str(rec[0].message)
    config, _ = no_export_warnings(to_state_dict, draft, "speculators", verifier="/models/SmolLM2-135M-Instruct")
    assert config["speculators_config"]["verifier"]["name_or_path"] == "/models/SmolLM2-135M-Instruct"
    with pytest.raises(ExportError, match="'gemma3-270m' is an embedded alias"):
        to_state_dict(draft, "speculators", verifier="gemma3-270m")


def test_an_alias_without_a_known_hub_id_needs_verifier(alias_base, tmp_path, monkeypatch, capsys):
    name = "smollm2-135m-instruct"
    monkeypatch.setitem(assets.EMBEDDED, name, dataclasses.replace(assets.EMBEDDED[name], hub_id=""))
    draft = draft_for(alias_base, **V3)
    with pytest.warns(ExportWarning, match="unknown"), pytest.raises(ExportError, match="pass --verifier NAME"):
        to_state_dict(draft, "speculators")
    no_export_warnings(to_state_dict, draft, "sglang-eagle3")  # the SGLang folder names no base; its hint does
    monkeypatch.setattr(cli, "_base", lambda cfg, default="": alias_base)
    cli.main([str(save_draft(draft, tmp_path / "draft")), str(tmp_path / "sg"), "--format", "sglang-eagle3"])
    out = capsys.readouterr().err
    assert f"--model-path {cli.UNKNOWN_BASE}" in out and "Hub id is unknown" in out


def test_cli_serve_hints_name_an_engine_loadable_base(alias_base, tmp_path, monkeypatch, capsys):
    folder = save_draft(draft_for(alias_base, **V3), tmp_path / "draft")
    monkeypatch.setattr(cli, "_base", lambda cfg, default="": alias_base)
    cli.main([str(folder), str(tmp_path / "sg"), "--format", "sglang-eagle3"])
    out = capsys.readouterr().err
    assert "--model-path HuggingFaceTB/SmolLM2-135M-Instruct " in out and "embedded alias" in out
    assert out.count("embedded alias") == 1  # said once though resolved for the folder and for the hint
    cli.main([str(folder), str(tmp_path / "sp"), "--format", "speculators", "--verifier", "org/smollm2"])
    assert "embedded alias" not in capsys.readouterr().err
    assert read_config(tmp_path / "sp")["speculators_config"]["verifier"]["name_or_path"] == "org/smollm2"


# ================================================================ 4. vLLM keeps a same-width own embedding from v0.12.0

def test_same_width_own_embedding_states_the_vllm_release(llama_base, tok_b_dir):
    same = draft_for(llama_base, **{**V3, "vocab": "foreign", "draft_tokenizer": tok_b_dir})
    with pytest.warns(ExportWarning, match=r"vLLM >= v0\.12\.0") as rec:
        _, state = to_state_dict(same, "speculators")
    assert "#28549" in str(rec[0].message) and "embed_tokens.weight" in state
    with pytest.raises(ExportError, match="SGLang then replaces"):
        to_state_dict(same, "sglang-eagle3")
    narrow = draft_for(llama_base, **{**V3, "vocab": "foreign", "draft_tokenizer": tok_b_dir, "draft_hidden_size": 48})
    no_export_warnings(to_state_dict, narrow, "speculators")  # another shape: every vLLM loads the draft's table


# ================================================================ 5. feature layers the engines capture

@pytest.mark.parametrize("fmt", ["sglang-eagle3", "speculators"])
@pytest.mark.parametrize("layers", [[0, 1, 2], [1, 2, 4]])
def test_feature_layers_the_engines_cannot_capture_are_refused(llama_base, tmp_path, fmt, layers):
    draft = draft_for(llama_base, **{**V3, "feature_layers": layers})
    with pytest.raises(ExportError, match=r"engines capture only the inputs of base layers 1 \.\. 3"):
        export_draft(draft, tmp_path / "x", fmt)


def test_contract_refuses_layer_ids_below_what_engines_capture(llama_base):
    config, state = to_state_dict(draft_for(llama_base, **V3), "speculators")
    tensors = describe_tensors(state)
    assert check_contract("speculators", config, tensors) == []
    bad = {**config, "eagle_aux_hidden_state_layer_ids": [0, 1, 2]}
    assert any(">= 1" in p for p in check_contract("speculators", bad, tensors))
    config, state = to_state_dict(draft_for(llama_base, **V3), "sglang-eagle3")
    bad = {**config, "eagle_config": {"eagle_aux_hidden_state_layer_ids": [-1, 0, 1], "use_aux_hidden_state": True}}
    assert any(">= 0" in p for p in check_contract("sglang-eagle3", bad, describe_tensors(state)))


# ================================================================ 6. SGLang folders without target_hidden_size

def _without(folder, *keys):
    config = read_config(folder)
    for key in keys:
        config.pop(key)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_import_takes_target_hidden_size_from_the_base(llama_base, tmp_path):
    same = draft_for(llama_base, seed=2, **V3)  # width 64 = the base's: SpecForge/EAGLE folders write no key
    folder = _without(export_draft(same, tmp_path / "same", "sglang-eagle3"), "target_hidden_size", "bias")
    assert check_folder(folder, "sglang-eagle3") == []  # SGLang reads the draft width, which is right here
    back = no_export_warnings(import_folder, folder, "sglang-eagle3", llama_base)
    assert torch.allclose(logits(back, llama_base), logits(same, llama_base), rtol=0, atol=1e-6)
    narrow = draft_for(llama_base, seed=3, **V3, draft_hidden_size=48)
    folder = _without(export_draft(narrow, tmp_path / "narrow", "sglang-eagle3"), "target_hidden_size")
    assert any("'fc.weight' has shape [48, 192]" in p for p in check_folder(folder, "sglang-eagle3"))
    with pytest.warns(ExportWarning, match="no target_hidden_size"):  # imported with the base's width, said so
        back = import_folder(folder, "sglang-eagle3", llama_base)
    assert torch.allclose(logits(back, llama_base), logits(narrow, llama_base), rtol=0, atol=1e-6)


# ================================================================ 7. original EAGLE: rope theta and serve hint

def test_eagle_export_refuses_a_rope_theta_eagle_llm_ignores(llama_base, tmp_path):
    draft = draft_for(llama_base, **V2, draft_rope_theta=100000.0)
    with pytest.raises(ExportError) as err:
        export_draft(draft, tmp_path / "no", "eagle")
    msg = str(err.value)
    assert "eagle-llm 1.2.1" in msg and "--modeling.draft_rope_theta 10000" in msg and "--force" in msg
    with pytest.warns(ExportWarning, match="--force"):
        folder = export_draft(draft, tmp_path / "yes", "eagle", force=True)
    assert read_config(folder)["rope_theta"] == 100000.0
    no_export_warnings(export_draft, draft, tmp_path / "sglang", "sglang-eagle")  # SGLang reads rope_theta


def test_cli_eagle_hint_matches_the_current_eagle_code(llama_base, tmp_path, capsys):
    folder = save_draft(draft_for(llama_base, **V2), tmp_path / "v2")
    cli.main([str(folder), str(tmp_path / "eagle"), "--format", "eagle"])
    out = capsys.readouterr().err
    assert f"base_model_path='{llama_base.name}'" in out and f"ea_model_path='{tmp_path / 'eagle'}'" in out
    assert "use_eagle3=False" in out and "gen_ea_answer_llama3chat" in out
