"""A base placed by HF's device map (models/placement.py, --modeling.device_map / --modeling.max_memory).

* `--modeling.max_memory` is parsed, never evaluated: literal results and clear errors;
* the keys reach `from_pretrained` (a real `device_map="auto"` load on this CPU machine);
* a base over several devices (simulated map, and a real accelerate map with layers offloaded
  to disk, hooks included) falls back to HF's forward and gives the lean forward's outputs:
  prefill, tree verify, rollback, features, and greedy speculative decoding.
"""

from __future__ import annotations

import pytest
import torch
from conftest import draft_modeling
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from specforge_het.algorithms.build import build_draft
from specforge_het.config import ConfigError, ModelingConfig, resolve
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.tree import layout_from_parents
from specforge_het.models import base as base_module
from specforge_het.models.base import BaseModel
from specforge_het.models.lean import supports_lean
from specforge_het.models.placement import is_sharded, parse_max_memory, placement_kwargs

TREE = torch.tensor([-1, 0, 0, 1, 1, 3])


def test_parse_max_memory_literal() -> None:
    assert parse_max_memory("0=17.5GiB,1=17GiB,cpu=30GiB") == {0: "17.5GiB", 1: "17GiB", "cpu": "30GiB"}
    assert parse_max_memory(" 0 = 20gib , CPU=500mb, disk=1000 ") == {0: "20GiB", "cpu": "500MB", "disk": 1000}
    assert parse_max_memory("") == {} and parse_max_memory("  ") == {}


@pytest.mark.parametrize("text,match", [
    ("0:17GiB", "not DEVICE=SIZE"),
    ("0=17GiB,", "not DEVICE=SIZE"),
    ("0=", "not DEVICE=SIZE"),
    ("gpu0=17GiB", "unknown device 'gpu0'"),
    ("0=17.5", "'17.5' for device '0' is not a size"),
    ("0=lots", "is not a size"),
    ("0=2TB", "is not a size"),
    ("0=1GiB,0=2GiB", "names device '0' twice"),
])
def test_parse_max_memory_errors(text, match) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        parse_max_memory(text)
    assert "0=17.5GiB,1=17GiB" in str(err.value) or "twice" in str(err.value)  # the error shows the fix


def test_placement_kwargs() -> None:
    assert placement_kwargs("", "") == {}
    assert placement_kwargs("auto", "") == {"device_map": "auto"}
    assert placement_kwargs("balanced", "0=1GiB,cpu=2GiB") == {"device_map": "balanced",
                                                               "max_memory": {0: "1GiB", "cpu": "2GiB"}}
    with pytest.raises(ConfigError, match="needs --modeling.device_map"):
        placement_kwargs("", "0=1GiB")
    with pytest.raises(ConfigError, match="not one of"):
        placement_kwargs("cuda:0", "")


def test_config_keys_from_the_command_line() -> None:
    cfg, _, _ = resolve(["--modeling.device_map", "auto", "--modeling.max_memory", "0=17.5GiB,1=17GiB,cpu=30GiB"])
    assert cfg.modeling.device_map == "auto" and cfg.modeling.max_memory == "0=17.5GiB,1=17GiB,cpu=30GiB"
    with pytest.raises(ConfigError, match="must be one of"):
        resolve(["--modeling.device_map", "everywhere"])


def _ids(n: int) -> torch.Tensor:
    return (torch.arange(n) * 11 % 280 + 5)[None]


def test_device_map_reaches_from_pretrained(base_dirs, bases, monkeypatch) -> None:
    seen = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append({k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()})  # HF edits max_memory
        return real(*args, **kwargs)

    monkeypatch.setattr(base_module.AutoModelForCausalLM, "from_pretrained", spy)
    m = ModelingConfig(base_model=base_dirs["llama"], device_map="auto", max_memory="cpu=2GiB")
    base = BaseModel.from_config(m)  # a real accelerate placement (all on the CPU here: one device)
    assert seen[-1]["device_map"] == "auto" and seen[-1]["max_memory"] == {"cpu": "2GiB"}
    assert getattr(base.model, "hf_device_map", {"": "cpu"}) == {"": "cpu"}  # one device sets no map
    assert not base.sharded and base.lean
    BaseModel.from_config(ModelingConfig(base_model=base_dirs["llama"]))
    assert "device_map" not in seen[-1] and "max_memory" not in seen[-1]  # default: plain load, then .to(device)
    with torch.no_grad():
        torch.testing.assert_close(base(_ids(9), base.new_cache(), logits="all").logits,
                                   bases["llama"](_ids(9), bases["llama"].new_cache(), logits="all").logits)
    with pytest.raises(ConfigError, match="is not a size"):
        BaseModel.from_config(ModelingConfig(base_model=base_dirs["llama"], device_map="auto", max_memory="cpu=big"))


def _offloaded(path: str, tmp_path) -> BaseModel:
    """The tiny base with layers 1 and 3 offloaded to disk by accelerate (real hooks, meta weights)."""
    dmap = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
            "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa",
                                                 device_map=dmap, offload_folder=str(tmp_path / "offload"))
    return BaseModel(model, AutoTokenizer.from_pretrained(path), name=path)


def _simulated(path: str) -> BaseModel:
    """The tiny base on the CPU, with a device map that names two devices (nothing moved)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 0,
                           "model.layers.2": "cpu", "model.layers.3": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    return BaseModel(model, AutoTokenizer.from_pretrained(path), name=path)


def _steps(base: BaseModel):
    layout = layout_from_parents(TREE)
    cache = base.new_cache()
    with torch.no_grad():
        pre = base(_ids(10), cache, feature_layers=(1, 3, -1), logits="all")
        ver = base(torch.tensor([[40, 41, 42, 43, 44, 45]]), cache, 10 + layout.position_offsets, layout.attn_mask,
                   feature_layers=(1, 3, -1), logits="all")
        cache.keep(10, torch.tensor([0, 2]))  # not a prefix: entries move
        step = base(torch.tensor([[46]]), cache, logits="all")
        feats = base.features(_ids(7), (0, 2, -1))
    return [pre.logits, pre.features, ver.logits, ver.features, step.logits, feats.features, feats.logits,
            torch.tensor(cache.get_seq_length())]


@pytest.mark.parametrize("kind", ["simulated", "offloaded"])
def test_sharded_base_falls_back_to_hf(base_dirs, bases, tmp_path, kind) -> None:
    plain = bases["llama"]
    base = _simulated(base_dirs["llama"]) if kind == "simulated" else _offloaded(base_dirs["llama"], tmp_path)
    assert is_sharded(base.model) and base.sharded
    assert not base.lean and isinstance(base.new_cache().hf, DynamicCache)  # HF's forward: hooks move tensors
    assert base.device == torch.device("cpu")  # the last layer's device: where the draft sits
    if kind == "offloaded":  # real accelerate hooks: batch generation's own check refuses the lean layers too
        assert not supports_lean(base.layers, base.config)
    with pytest.raises(ValueError, match="sharded over several devices"):
        base(_ids(3), plain.new_cache())
    for got, want in zip(_steps(base), _steps(plain)):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_speculative_decoding_on_a_sharded_base(base_dirs, bases, tmp_path) -> None:
    plain = bases["llama"]
    sharded = _offloaded(base_dirs["llama"], tmp_path)
    draft = build_draft(draft_modeling(), plain, seed=0).eval()
    spec = TreeSpec("dynamic", max_depth=3, top_k=3, total_tokens=8)
    prompt = _ids(10)
    ref = Decoder(plain).generate(prompt, 16).tokens
    with torch.no_grad():
        got = Decoder(sharded, DraftProposer(draft.attach(sharded), spec)).generate(prompt, 16).tokens
    assert got == ref  # greedy speculative decoding on the HF fallback is lossless
