"""Slow tests on the real embedded default models (SmolLM2-135M-Instruct, Gemma-3-270M). Run in CI too."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import real_model_threads, subprocess_env

from specforge_het.algorithms import get_algorithm
from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.io import load_draft, read_draft_config, save_draft
from specforge_het.assets import shipped_drafts
from specforge_het.config import Config, apply_preset, load_presets, resolve
from specforge_het.inference.__main__ import make_proposer
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.lookup import LookupProposer
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models.base import BaseModel

pytestmark = pytest.mark.slow

_BASES: dict[str, BaseModel] = {}


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    """Real models use this worker's share of the cores (conftest pins tiny-model tests to one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(real_model_threads())
    yield
    torch.set_num_threads(before)


def base_for(name: str) -> BaseModel:
    if name not in _BASES:
        _BASES[name] = BaseModel.load(name)
    return _BASES[name]


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_embedded_default_loads_and_generates_8_tokens(name):
    base = base_for(name)
    ids = base.tokenizer("The capital of France is", return_tensors="pt").input_ids
    ours = Decoder(base).generate(ids, 8)
    hf = base.model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
    assert len(ours.tokens) == 8 or ours.stopped_at_eos
    assert ours.tokens == hf[: len(ours.tokens)]
    assert base.tokenizer.decode(ours.tokens).strip()


def test_heterogeneous_preset_save_reload_identical_logits(tmp_path):
    cfg, _, _ = resolve(["--@gemma3_smollm2_het"])
    base = base_for(cfg.modeling.base_model)
    draft = build_draft(cfg.modeling, base)
    assert (draft.cfg.family, draft.cfg.hidden_size, draft.cfg.vocab) == ("llama", 576, "foreign")
    assert base.config.model_type == "gemma3_text" and base.hidden_size == 640
    ids = base.tokenizer("Speculative decoding with a foreign tokenizer.", return_tensors="pt").input_ids
    assert draft.vocab.coverage(ids) > 0.5
    # punctuation and digits too (Gemma's byte-fallback tokens once shadowed them: tests/test_vocab_map.py)
    text = base.tokenizer("Speculative decoding: 3.5 times faster, isn't it? Yes: 12 of 40 steps.",
                          add_special_tokens=False, return_tensors="pt").input_ids
    assert draft.vocab.coverage(text) == 1.0
    feats = base.features(ids, tuple(draft.cfg.feature_layers)).features
    pos = torch.arange(ids.shape[1])[None]
    before = draft.logits(draft(ids, draft.input_from_base(ids, feats), pos))
    save_draft(draft, tmp_path / "draft")
    again = load_draft(tmp_path / "draft", base)
    after = again.logits(again(ids, again.input_from_base(ids, feats), pos))
    assert torch.equal(before, after)
    with pytest.raises(ValueError, match="640"):
        load_draft(tmp_path / "draft", base_for("smollm2-135m-instruct"))


def _instantiable(preset: str, body: dict) -> list[str]:
    """Presets without a base are stacked after @smollm2."""
    return [preset] if "base_model" in body.get("modeling", {}) else ["smollm2", preset]


@pytest.mark.parametrize("preset", sorted(load_presets()))
def test_every_preset_instantiates(preset):
    cfg = Config()
    presets = load_presets()
    for name in _instantiable(preset, presets[preset]):
        apply_preset(cfg, name, presets)
    base = base_for(cfg.modeling.base_model)
    tree = TreeSpec.from_config(cfg.inference)
    algo = get_algorithm(cfg.modeling.algorithm)
    # a trained-draft algorithm builds a fresh draft; one without a draft folder (standalone) its own proposer
    draft = build_draft(cfg.modeling, base) if algo.uses_draft_folder else None
    ids = base.tokenizer("Hello", return_tensors="pt").input_ids
    spec = Decoder(base, make_proposer(cfg, base, draft, tree)).generate(ids, 6)
    assert spec.tokens == Decoder(base).generate(ids, 6).tokens


def test_inference_compare_on_embedded_default():
    """The README's main job, shortened (a fixed tree instead of `tree auto`, whose calibration
    tests/test_cost_model.py covers): identical outputs on MT-Bench questions."""
    cmd = [sys.executable, "-m", "specforge_het.inference", "--@smollm2", "--@tree_cpu", "--modeling.draft_path",
           "smollm2-135m-instruct-eagle3", "--inference.lookup_tokens", "10", "--inference.compare", "--mtbench",
           "mtbench:3", "--inference.max_new_tokens", "12"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                         env=subprocess_env(OMP_NUM_THREADS=str(real_model_threads())))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "identical outputs: 6/6" in out.stdout


@pytest.mark.parametrize("name", shipped_drafts())
def test_shipped_draft_loads_and_decodes_losslessly(name):
    """Every shipped draft loads onto its embedded base; greedy speculative decoding (tree and tree +
    prompt lookup) equals base-only decoding."""
    cfg = read_draft_config(name)
    base = base_for(cfg.base["name"])
    draft = load_draft(name, base).eval()
    ids = base.tokenizer("User: Name three colours and explain why the sky is blue.\nAssistant:",
                         return_tensors="pt").input_ids
    ref = Decoder(base).generate(ids, 24).tokens
    tree = TreeSpec("dynamic", 4, 4, 12)
    spec = Decoder(base, DraftProposer(draft, tree)).generate(ids, 24)
    assert spec.tokens == ref
    assert Decoder(base, LookupProposer(DraftProposer(draft, tree), 8)).generate(ids, 24).tokens == ref
