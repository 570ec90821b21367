"""The original EAGLE-1/2 checkpoint bridge (import/export, key map, .bin safety, CLI), and a slow
test exporting untrained embedded-default drafts (SmolLM2 EagleV3 and EagleV2) to every format."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.io import load_draft
from specforge_het.config import ModelingConfig, resolve
from specforge_het.export import FORMATS, ExportError, check_folder, export_draft, import_folder, to_state_dict
from specforge_het.export.__main__ import main
from specforge_het.export.eagle import (
    EAGLE_KEY_MAP,
    export_eagle,
    from_eagle_state_dict,
    import_eagle_checkpoint,
    to_eagle_state_dict,
)

IDS = torch.tensor([[5, 17, 33, 120, 7, 250, 42]])
EAGLE_CONFIG_KEYS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "bias"}


def v2_draft(base, layers=1, seed=0):
    m = ModelingConfig(algorithm="eagle_v2", vocab="base", draft_family="llama", draft_num_layers=layers,
                       draft_first_input_norm=False)
    return build_draft(m, base, seed=seed).eval()


@torch.no_grad()
def logits(draft, base, ids=IDS):
    feats = base.features(ids, tuple(draft.cfg.feature_layers)).features
    pos = torch.arange(ids.shape[1])[None]
    return draft.logits(draft(ids, draft.input_from_base(ids, feats), pos))


@pytest.fixture(scope="module")
def draft(llama_base):
    return v2_draft(llama_base)


def test_eagle_layout_and_config(draft, llama_base):
    config, state = to_eagle_state_dict(draft)
    assert set(state) == set(EAGLE_KEY_MAP) | {"embed_tokens.weight"}
    assert EAGLE_CONFIG_KEYS <= set(config) and config["bias"] is True
    assert config["head_dim"] * config["num_attention_heads"] == config["hidden_size"]  # how EAGLE derives head_dim
    assert config["architectures"] == ["LlamaForCausalLM"] and config["rope_scaling"] is None
    assert torch.equal(state["embed_tokens.weight"], llama_base.model.get_input_embeddings().weight)


@pytest.mark.parametrize("layers", [1, 2])
def test_eagle_export_import_round_trip(llama_base, tmp_path, layers):
    draft = v2_draft(llama_base, layers, seed=layers)
    folder = export_eagle(draft, tmp_path / "eagle")
    assert check_folder(folder, "eagle") == []
    back = import_eagle_checkpoint(folder, llama_base)
    assert back.cfg.first_input_norm is False and back.cfg.num_layers == layers
    assert torch.allclose(logits(back, llama_base), logits(draft, llama_base), rtol=0, atol=1e-6)


def original_checkpoint(draft, folder, *, fmt="bin", drop=(), rename=None, minimal=True, extra=None):
    """A checkpoint as the original EAGLE ships it: a sparse Llama config.json + pytorch_model.bin."""
    config, state = to_eagle_state_dict(draft)
    if minimal:  # what EConfig fills in by itself
        config = {k: v for k, v in config.items() if k in EAGLE_CONFIG_KEYS | {"architectures", "model_type"}}
        config.pop("bias")
    for k in drop:
        state.pop(k)
    if rename:
        state[rename[1]] = state.pop(rename[0])
    state.update(extra or {})
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_import_original_checkpoint(draft, llama_base, tmp_path, fmt):
    folder = original_checkpoint(draft, tmp_path / "orig", fmt=fmt)
    back = import_eagle_checkpoint(folder, llama_base)
    assert torch.allclose(logits(back, llama_base), logits(draft, llama_base), rtol=0, atol=1e-6)


def test_import_rejects_unexpected_and_missing_keys_with_both_lists(draft, llama_base, tmp_path):
    folder = original_checkpoint(draft, tmp_path / "bad", drop=["layers.0.mlp.up_proj.weight"],
                                 rename=("fc.bias", "fc.b"), extra={"layers.0.input_layernorm.weight": torch.ones(64)})
    with pytest.raises(ExportError) as err:
        import_eagle_checkpoint(folder, llama_base)
    msg = str(err.value)
    assert "unexpected keys ['fc.b', 'layers.0.input_layernorm.weight']" in msg
    assert "missing keys ['fc.bias', 'layers.0.mlp.up_proj.weight']" in msg


def test_bin_files_are_read_weights_only(draft, llama_base, tmp_path):
    folder = original_checkpoint(draft, tmp_path / "evil", extra={})
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["fc.weight"] = _NotATensor()  # an arbitrary pickled object: only a full unpickler would build it
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        import_eagle_checkpoint(folder, llama_base)


class _NotATensor:
    pass


def test_bias_false_checkpoint_gets_a_zero_bias(llama_base):
    with torch.no_grad():
        draft_nobias = v2_draft(llama_base, seed=9)
        draft_nobias.fc.bias.zero_()
    config, state = to_eagle_state_dict(draft_nobias)
    state.pop("fc.bias")
    back = from_eagle_state_dict({**config, "bias": False}, state, llama_base)
    assert torch.equal(back.fc.bias, torch.zeros(64))
    assert torch.allclose(logits(back, llama_base), logits(draft_nobias, llama_base), rtol=0, atol=1e-6)
    with pytest.raises(ExportError, match="unexpected keys \\['fc.bias'\\]"):  # bias false but a bias present
        from_eagle_state_dict({**config, "bias": False}, {**state, "fc.bias": torch.zeros(64)}, llama_base)


def test_import_refuses_a_checkpoint_for_another_base(draft, llama_base, tmp_path):
    config, state = to_eagle_state_dict(draft)
    state["embed_tokens.weight"] = state["embed_tokens.weight"] + 0.5  # trained on another base's embedding
    with pytest.raises(ExportError, match="differs from the embedding of base"):
        from_eagle_state_dict(config, state, llama_base)
    with pytest.raises(ExportError, match="vocabulary 300 and width 64"):
        from_eagle_state_dict({**config, "vocab_size": 300}, state, _Narrow())


class _Narrow:  # a base of another width (only the facts the check reads)
    vocab_size, hidden_size, name = 300, 32, "narrow"


def test_import_eagle_cli(draft, llama_base, base_dirs, tmp_path, capsys):
    src = original_checkpoint(draft, tmp_path / "orig")
    out = tmp_path / "ours"
    main(["import_eagle", str(src), str(out), "--modeling.base_model", base_dirs["llama"]])
    assert "wrote draft folder" in capsys.readouterr().err
    loaded = load_draft(out, llama_base)
    assert loaded.cfg.algorithm == "eagle_v2"
    assert torch.allclose(logits(loaded, llama_base), logits(draft, llama_base), rtol=0, atol=1e-6)
    assert json.loads((out / "provenance.json").read_text())["imported_from"] == str(src)
    with pytest.raises(SystemExit) as err:
        main(["import_eagle", str(src), str(tmp_path / "x")])  # EAGLE checkpoints do not name their base
    assert err.value.code == 2 and "no base model" in capsys.readouterr().err


# ================================================================ embedded defaults (slow)

APPLICABLE = {"eagle_v3": ("sglang-eagle3", "speculators"), "eagle_v2": ("sglang-eagle", "eagle")}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["eagle_v3", "eagle_v2"])
def test_embedded_smollm2_drafts_export_to_every_applicable_format(tmp_path, algorithm):
    from specforge_het.models.base import BaseModel

    cfg, _, _ = resolve(["--@smollm2", f"--@{algorithm}", "--modeling.draft_vocab_size", "4096"])
    base = BaseModel.load(cfg.modeling.base_model)
    draft = build_draft(cfg.modeling, base).eval()
    ids = base.tokenizer("Speculative decoding exports a draft to SGLang.", return_tensors="pt").input_ids
    want = logits(draft, base, ids)
    for fmt in FORMATS:
        if fmt not in APPLICABLE[algorithm]:
            with pytest.raises(ExportError, match="cannot be exported"):
                to_state_dict(draft, fmt)
            continue
        force = fmt == "eagle" and draft.cfg.rope_theta != 10000.0  # SmolLM2's theta: eagle-llm 1.2.1 would ignore it
        if force:
            with pytest.raises(ExportError, match="--force"):
                to_state_dict(draft, fmt)
        folder = export_draft(draft, tmp_path / fmt, fmt, dtype=torch.bfloat16, force=force)
        assert check_folder(folder, fmt) == []
        back = import_folder(folder, fmt, base)
        exact = export_draft(draft, tmp_path / f"{fmt}32", fmt, force=force)  # float32: identical logits
        assert torch.allclose(logits(import_folder(exact, fmt, base), base, ids), want, rtol=0, atol=1e-5)
        assert (logits(back, base, ids).argmax(-1) == want.argmax(-1)).float().mean() > 0.8  # bfloat16 copy
