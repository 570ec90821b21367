"""Export to engine formats on tiny models: exact round trips, vocabulary folding, refusals, contract checks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.io import save_draft
from specforge_het.config import ModelingConfig
from specforge_het.export import ExportError, ExportWarning, check_folder, export_draft, import_folder, to_state_dict
from specforge_het.export.__main__ import main
from specforge_het.export.contract import check_contract, check_vocab_maps, describe_tensors
from specforge_het.export.sglang_eagle3 import default_aux_layers
from specforge_het.models.adapters import token_strings
from specforge_het.models.base import BaseModel
from specforge_het.testing import save_tiny_base

IDS = torch.tensor([[5, 17, 33, 120, 7, 250, 42]])
V3 = dict(algorithm="eagle_v3", feature_layers=[1, 2, 3])
DRAFTS = {  # name -> modeling overrides on the tiny llama base (width 64, vocabulary 300)
    "v3_reduced_w48": dict(**V3, vocab="reduced", draft_hidden_size=48),
    "v3_reduced_w64": dict(**V3, vocab="reduced"),
    "v3_base_vocab": dict(**V3, vocab="base"),
    "v3_foreign_w48": dict(**V3, vocab="foreign", draft_hidden_size=48),
    "v3_foreign_w64": dict(**V3, vocab="foreign"),
    "v2": dict(algorithm="eagle_v2", vocab="base", draft_first_input_norm=False),
}
ROUND_TRIPS = [
    ("v3_reduced_w48", "sglang-eagle3"), ("v3_reduced_w48", "speculators"),
    ("v3_reduced_w64", "sglang-eagle3"), ("v3_reduced_w64", "speculators"),
    ("v3_base_vocab", "sglang-eagle3"), ("v3_base_vocab", "speculators"),
    ("v3_foreign_w48", "sglang-eagle3"), ("v3_foreign_w48", "speculators"), ("v3_foreign_w64", "speculators"),
    ("v2", "sglang-eagle"), ("v2", "eagle"),
]


def modeling(tok_dir: str = "", **kw) -> ModelingConfig:
    kw.setdefault("draft_family", "llama")
    kw.setdefault("draft_vocab_size", 120)
    if kw.get("vocab") == "foreign":
        kw["draft_tokenizer"] = tok_dir
    return ModelingConfig(**kw)


@pytest.fixture(scope="module")
def drafts(llama_base, tok_b_dir):
    return {name: build_draft(modeling(tok_b_dir, **spec), llama_base, seed=3).eval() for name, spec in DRAFTS.items()}


@torch.no_grad()
def two_step_logits(draft, base, ids=IDS) -> torch.Tensor:
    """Draft logits of a forward from base features, then one step on the draft's own output. [1, 2S, V]"""
    feats = base.features(ids, tuple(draft.cfg.feature_layers)).features
    pos = torch.arange(ids.shape[1])[None]
    h1 = draft(ids, draft.input_from_base(ids, feats), pos)
    nxt = torch.roll(ids, -1, dims=1)
    h2 = draft(nxt, draft.input_from_self(nxt, h1), pos + 1)
    return torch.cat([draft.logits(h1), draft.logits(h2)], dim=1)


# ================================================================ round trips

@pytest.mark.parametrize("name,fmt", ROUND_TRIPS)
def test_export_then_import_gives_identical_logits(drafts, llama_base, tmp_path, name, fmt):
    draft = drafts[name]
    folder = export_draft(draft, tmp_path / fmt, fmt)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert check_folder(folder, fmt) == []
    again = import_folder(folder, fmt, llama_base)
    before, after = two_step_logits(draft, llama_base), two_step_logits(again, llama_base)
    assert before.shape == after.shape
    assert torch.allclose(before, after, rtol=0, atol=1e-6), (before - after).abs().max()
    rows = before.argmax(-1)
    assert torch.equal(draft.to_base_ids(rows), again.to_base_ids(rows))  # the same base tokens are proposed


def test_reimported_folder_saves_and_loads_as_a_draft_folder(drafts, llama_base, tmp_path):
    from specforge_het.algorithms.io import load_draft

    again = import_folder(export_draft(drafts["v3_foreign_w48"], tmp_path / "e", "speculators"), "speculators", llama_base)
    loaded = load_draft(save_draft(again, tmp_path / "draft"), llama_base)
    assert torch.equal(two_step_logits(again, llama_base), two_step_logits(loaded, llama_base))


# ================================================================ what the folders hold

def test_reduced_vocab_d2t_is_written_as_offsets(drafts):
    draft = drafts["v3_reduced_w64"]
    config, state = to_state_dict(draft, "sglang-eagle3")
    absolute = draft.vocab.d2t
    assert state["d2t"].dtype == torch.int64 and state["t2d"].dtype == torch.bool
    assert torch.equal(state["d2t"] + torch.arange(120), absolute)  # base id = i + d2t[i]
    assert bool((state["d2t"] != absolute).any())  # offsets, not the absolute ids we store
    assert state["t2d"].shape == (300,) and int(state["t2d"].sum()) == 120 and bool(state["t2d"][absolute].all())
    assert config["draft_vocab_size"] == 120 and config["vocab_size"] == 300
    assert torch.equal(state["lm_head.weight"], draft.lm_head.weight)
    assert "embed_tokens.weight" not in state  # same width, base embedding: SGLang shares the base's


def test_full_vocabulary_draft_writes_its_own_head_over_every_base_id(drafts):
    config, state = to_state_dict(drafts["v3_base_vocab"], "sglang-eagle3")
    assert config["draft_vocab_size"] == config["vocab_size"] == 300  # explicit: null would load the base head
    assert state["lm_head.weight"].shape == (300, 64)
    assert torch.equal(state["d2t"], torch.zeros(300, dtype=torch.int64)) and bool(state["t2d"].all())


def test_width_mismatch_writes_projected_embedding(drafts, llama_base):
    draft = drafts["v3_reduced_w48"]
    config, state = to_state_dict(draft, "sglang-eagle3")
    assert (config["hidden_size"], config["target_hidden_size"]) == (48, 64)
    assert state["fc.weight"].shape == (48, 3 * 64)
    assert state["midlayer.self_attn.q_proj.weight"].shape[1] == 2 * 48
    with torch.no_grad():
        want = draft.embed_proj(llama_base.embed(torch.arange(300)))
    assert torch.allclose(state["embed_tokens.weight"], want, atol=1e-6)


def test_foreign_vocabulary_folds_onto_base_ids(drafts, llama_base, tok_a, tok_b):
    draft = drafts["v3_foreign_w48"]
    _, state = to_state_dict(draft, "speculators")
    base_ids = state["d2t"] + torch.arange(state["d2t"].shape[0])
    base_str, draft_str = token_strings(tok_a), token_strings(tok_b)
    for row, (b, d) in enumerate(zip(base_ids.tolist(), draft.vocab.draft_token_ids.tolist())):
        assert base_str[b] == draft_str[d] is not None, row  # head row i proposes the base token of the same string
    assert torch.equal(state["lm_head.weight"], draft.lm_head.weight)  # rows stay aligned with d2t
    with torch.no_grad():
        want = draft.embed(torch.arange(300)[None])[0]  # mean of the draft pieces spelling each base token
    assert torch.equal(state["embed_tokens.weight"], want)


def test_speculators_config(drafts, llama_base):
    config, state = to_state_dict(drafts["v3_reduced_w48"], "speculators")
    assert config["norm_before_residual"] is False
    assert config["speculators_model_type"] == "eagle3" and config["architectures"] == ["Eagle3Speculator"]
    assert config["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]  # vLLM: input of base layer i = our index
    layer = config["transformer_layer_config"]
    assert (layer["vocab_size"], layer["hidden_size"], layer["num_hidden_layers"]) == (300, 48, 1)
    verifier = config["speculators_config"]["verifier"]
    assert verifier == {"name_or_path": llama_base.name, "architectures": ["LlamaForCausalLM"]}
    assert config["speculators_config"]["proposal_methods"][0]["proposal_type"] == "greedy"
    assert {k.split(".")[0] for k in state} == {"fc", "layers", "norm", "lm_head", "d2t", "t2d", "embed_tokens"}


def test_sglang_feature_layer_ids_are_written_in_sglang_convention(drafts, tmp_path, tok_a):
    config, _ = to_state_dict(drafts["v3_reduced_w64"], "sglang-eagle3")
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]  # SGLang adds 1
    assert default_aux_layers(32) == [2, 16, 29]
    base8 = BaseModel.load(save_tiny_base(tmp_path / "base8", "llama", tok_a, layers=8))
    draft = build_draft(modeling(algorithm="eagle_v3", vocab="reduced"), base8)
    assert draft.cfg.feature_layers == default_aux_layers(8) == [2, 4, 5]
    config, _ = to_state_dict(draft, "sglang-eagle3")
    assert "eagle_config" not in config  # the default both engines use needs no key
    again = import_folder(export_draft(draft, tmp_path / "out", "sglang-eagle3"), "sglang-eagle3", base8)
    assert again.cfg.feature_layers == [2, 4, 5]


def test_sglang_eagle_layout(drafts):
    config, state = to_state_dict(drafts["v2"], "sglang-eagle")
    assert config["architectures"] == ["LlamaForCausalLMEagle"]
    assert "layers.0.input_layernorm.weight" not in state and "norm.weight" not in state
    assert state["fc.weight"].shape == (64, 128) and state["fc.bias"].shape == (64,)


def test_export_dtype(drafts, tmp_path):
    folder = export_draft(drafts["v3_reduced_w48"], tmp_path / "bf16", "speculators", dtype=torch.bfloat16)
    state = load_file(str(folder / "model.safetensors"))
    assert state["fc.weight"].dtype == torch.bfloat16 and state["d2t"].dtype == torch.int64
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "bfloat16"


# ================================================================ refusals

REFUSALS = [  # (modeling overrides, format, words the reason must contain)
    (dict(**V3, draft_family="qwen3"), "sglang-eagle3", "'qwen3'"),
    (dict(**V3, draft_family="gemma3"), "speculators", "'gemma3'"),
    (dict(**V3, draft_num_layers=2), "sglang-eagle3", "exactly 1"),
    (dict(algorithm="eagle_v3"), "speculators", "exactly 3 distinct"),  # the 4-layer base's default is [1, 2]
    (dict(**V3, vocab="foreign"), "sglang-eagle3", "SGLang then replaces"),
    (dict(**V3), "sglang-eagle", "EAGLE-1/2"),
    (dict(algorithm="eagle_v2", vocab="base", draft_first_input_norm=False), "sglang-eagle3", "EAGLE-3"),
    (dict(algorithm="eagle_v2", vocab="base", draft_first_input_norm=False), "speculators", "EAGLE-3"),
    (dict(algorithm="eagle_v2", vocab="base", draft_first_input_norm=False, draft_hidden_size=48), "sglang-eagle",
     "width 48 differs"),
    (dict(algorithm="eagle_v2", vocab="base"), "sglang-eagle", "input_layernorm"),
    (dict(algorithm="eagle_v2", vocab="reduced", draft_first_input_norm=False), "eagle", "own vocabulary"),
    (dict(algorithm="eagle_v2", vocab="base", draft_first_input_norm=False, draft_family="qwen3"), "eagle", "'qwen3'"),
]


@pytest.mark.parametrize("spec,fmt,reason", REFUSALS)
def test_export_refuses_what_the_format_cannot_express(llama_base, tok_b_dir, tmp_path, spec, fmt, reason):
    draft = build_draft(modeling(tok_b_dir, **spec), llama_base)
    with pytest.raises(ExportError, match="cannot be exported") as err:
        export_draft(draft, tmp_path / "out", fmt)
    assert reason in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_scaled_base_embedding_is_refused_where_the_engine_shares_the_raw_table(bases):
    gemma = bases["gemma3"]  # Gemma scales its embedding by sqrt(width); engines share the unscaled weight
    v3 = build_draft(modeling(**V3, vocab="reduced"), gemma)
    with pytest.raises(ExportError, match="scales its embedding"):
        to_state_dict(v3, "sglang-eagle3")
    with pytest.warns(ExportWarning, match="vLLM would refuse"):  # Gemma is not on vLLM's EAGLE-3 list: --force
        _, state = to_state_dict(v3, "speculators", force=True)  # vLLM loads embed_tokens when present: exact
    assert torch.allclose(state["embed_tokens.weight"], gemma.embed(torch.arange(300)), atol=1e-6)
    v2 = build_draft(modeling(algorithm="eagle_v2", vocab="base", draft_first_input_norm=False), gemma)
    with pytest.raises(ExportError, match="scales its embedding"):
        to_state_dict(v2, "sglang-eagle")


def test_import_refuses_another_base(drafts, bases, tmp_path):
    folder = export_draft(drafts["v3_reduced_w48"], tmp_path / "x", "sglang-eagle3")
    with pytest.raises(ExportError, match="width 64") as err:
        import_folder(folder, "sglang-eagle3", build_base_of_width(tmp_path, 32))
    assert "--modeling.base_model" in str(err.value)


def build_base_of_width(tmp_path, width: int):
    from specforge_het.testing import CORPUS_A, make_tokenizer

    return BaseModel.load(save_tiny_base(tmp_path / f"w{width}", "llama", make_tokenizer(CORPUS_A, 300), hidden=width))


# ================================================================ the contract check catches mistakes

@pytest.fixture(scope="module")
def spec_parts(drafts):
    config, state = to_state_dict(drafts["v3_reduced_w48"], "speculators")
    return config, describe_tensors(state)


def test_contract_accepts_what_the_exporter_writes(spec_parts):
    assert check_contract("speculators", *spec_parts) == []


def _broken(parts, *, drop_key=None, set_key=None, rename=None, shape=None, dtype=None, add=None):
    config, tensors = json.loads(json.dumps(parts[0])), dict(parts[1])
    if drop_key:
        config.pop(drop_key)
    if set_key:
        config.update(set_key)
    if rename:
        tensors[rename[1]] = tensors.pop(rename[0])
    if shape:
        tensors[shape[0]] = (shape[1], tensors[shape[0]][1])
    if dtype:
        tensors[dtype[0]] = (tensors[dtype[0]][0], dtype[1])
    if add:
        tensors[add[0]] = add[1]
    return config, tensors


@pytest.mark.parametrize("change,message", [
    (dict(drop_key="norm_before_residual"), "'norm_before_residual' is missing"),
    (dict(set_key={"norm_before_residual": True}), "norm_before_residual' = True"),
    (dict(rename=("layers.0.hidden_norm.weight", "layers.0.hiden_norm.weight")), "'layers.0.hiden_norm.weight' is unknown"),
    (dict(rename=("layers.0.hidden_norm.weight", "midlayer.hidden_norm.weight")), "'layers.0.hidden_norm.weight' [48] is missing"),
    (dict(shape=("fc.weight", (48, 128))), "'fc.weight' has shape [48, 128], the engine expects [48, 192]"),
    (dict(dtype=("d2t", "int32")), "'d2t' has dtype int32, must be int64"),
    (dict(dtype=("norm.weight", "bfloat16")), "mix dtypes"),
    (dict(add=("layers.0.input_norm.weight", ((48,), "float32"))), "is unknown to the engine"),
    (dict(drop_key="eagle_aux_hidden_state_layer_ids"), "'eagle_aux_hidden_state_layer_ids' is missing"),
    (dict(set_key={"eagle_aux_hidden_state_layer_ids": [3, 1, 2]}), "3 sorted distinct"),
    (dict(drop_key="target_hidden_size"), "'target_hidden_size' is missing"),
])
def test_contract_catches(spec_parts, change, message):
    problems = check_contract("speculators", *_broken(spec_parts, **change))
    assert any(message in p for p in problems), problems


def test_contract_catches_engine_specific_mistakes(drafts):
    config, state = to_state_dict(drafts["v2"], "sglang-eagle")
    tensors = describe_tensors(state)
    assert check_contract("sglang-eagle", config, tensors) == []
    with_norm = {**tensors, "layers.0.input_layernorm.weight": ((64,), "float32")}  # EAGLE-1/2 layer 0 has none
    assert any("'layers.0.input_layernorm.weight' is unknown" in p for p in check_contract("sglang-eagle", config, with_norm))
    with_head = {**tensors, "lm_head.weight": ((300, 64), "float32")}  # ignored by SGLang's EAGLE
    assert any("'lm_head.weight' is unknown" in p for p in check_contract("sglang-eagle", config, with_head))
    no_bias = {k: v for k, v in tensors.items() if k != "fc.bias"}
    assert any("'fc.bias' [64] is missing" in p for p in check_contract("sglang-eagle", config, no_bias))
    tied = {**config, "tie_word_embeddings": True}
    assert any("tie_word_embeddings" in p for p in check_contract("sglang-eagle", tied, tensors))
    c3, s3 = to_state_dict(drafts["v3_reduced_w48"], "sglang-eagle3")
    t3 = describe_tensors(s3)
    assert check_contract("sglang-eagle3", c3, t3) == []
    no_embed = {k: v for k, v in t3.items() if k != "embed_tokens.weight"}  # required when widths differ
    assert any("'embed_tokens.weight' [300, 48] is missing" in p for p in check_contract("sglang-eagle3", c3, no_embed))
    assert any("'layers.0.hidden_norm.weight' is unknown" in p for p in check_contract(
        "sglang-eagle3", c3, {("layers.0." + k[9:] if k.startswith("midlayer.") else k): v for k, v in t3.items()}))


def test_vocab_map_values_are_checked():
    absolute = torch.tensor([0, 2, 4])  # absolute ids mistaken for offsets: row 2 -> 2 + 4 = 6, outside [0, 5)
    assert any("outside the base vocabulary" in p for p in check_vocab_maps(absolute, torch.ones(5, dtype=torch.bool), 5))
    offsets = torch.tensor([0, 1, 2])  # base ids 0, 2, 4
    good = torch.tensor([True, False, True, False, True])
    assert check_vocab_maps(offsets, good, 5) == []
    assert any("t2d" in p for p in check_vocab_maps(offsets, torch.tensor([True, True, True, False, False]), 5))
    assert any("same base id" in p for p in check_vocab_maps(torch.tensor([1, 0, 0]), good, 5))


# ================================================================ CLI

def test_cli_export_and_check(drafts, llama_base, tmp_path, capsys):
    folder = save_draft(drafts["v3_reduced_w48"], tmp_path / "draft")  # its config.json names the base
    out = tmp_path / "sglang"
    main([str(folder), str(out), "--format", "sglang-eagle3"])
    assert "contract check passed" in capsys.readouterr().err
    assert check_folder(out, "sglang-eagle3") == []
    main(["check", str(out), "--format", "sglang-eagle3"])
    assert "contract OK" in capsys.readouterr().err
    state = load_file(str(out / "model.safetensors"))
    state["midlayer.hiden_norm.weight"] = state.pop("midlayer.hidden_norm.weight")
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(SystemExit) as err:
        main(["check", str(out), "--format", "sglang-eagle3"])
    assert err.value.code == 2
    assert "'midlayer.hiden_norm.weight' is unknown" in capsys.readouterr().err


def test_cli_refusal_and_unknown_format_exit_2(drafts, tmp_path, capsys):
    folder = save_draft(drafts["v2"], tmp_path / "v2")
    with pytest.raises(SystemExit) as err:
        main([str(folder), str(tmp_path / "o"), "--format", "speculators"])
    assert err.value.code == 2 and "EAGLE-3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(folder), str(tmp_path / "o"), "--format", "sglang"])
    assert "choose one of" in capsys.readouterr().err


def test_cli_import_folder_back_into_a_draft_folder(drafts, llama_base, base_dirs, tmp_path):
    from specforge_het.algorithms.io import load_draft

    exported = export_draft(drafts["v3_reduced_w64"], tmp_path / "spec", "speculators")
    main(["import_folder", str(exported), str(tmp_path / "back"), "--format", "speculators"])  # base from the verifier
    back = load_draft(tmp_path / "back", llama_base)
    assert torch.allclose(two_step_logits(back, llama_base), two_step_logits(drafts["v3_reduced_w64"], llama_base),
                          rtol=0, atol=1e-6)


def test_cli_exports_a_shipped_draft_by_name(drafts, tmp_path, monkeypatch, capsys):
    from specforge_het import assets

    monkeypatch.setattr(assets, "SHIPPED_DRAFTS", tmp_path / "shipped")
    save_draft(drafts["v2"], tmp_path / "shipped" / "tiny-eagle2")
    main(["tiny-eagle2", str(tmp_path / "out"), "--format", "sglang-eagle", "--dtype", "bfloat16"])
    assert check_folder(tmp_path / "out", "sglang-eagle") == []
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert "--speculative-algorithm EAGLE " in capsys.readouterr().err
