"""The CUDA paths on tiny local models: decoding (greedy equality with every draft kind, tree, the lookup
branch and both fast-path strategies; the oracle's full depth; lossless sampling), training through HF
Trainer on the GPU, data generation and stored features, and export of a GPU-trained draft.

They need a CUDA GPU, so CI (no GPU) skips this file. On a GPU machine: `pytest tests/test_cuda.py`
(docs/gpu.md). `SPECFORGE_HET_TEST_DEVICE=cpu pytest tests/test_cuda.py` runs the same tests on CPU, to
check the tests themselves. References are computed on CPU in float32: the device must give the same
tokens (tiny models with sharp logits keep greedy argmaxes far from ties).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import DRAFT_KINDS, REPO, USER_PROMPTS, draft_modeling, sharpened_base, subprocess_env
from sampling_stats import ALPHA, CASES, RUNS, SEED, assert_follows_base, exact_sequences, fit_pvalue, sample_runs
from test_data_gen import make_cfg, rows_of
from test_train import PINNED, PRESETS, _losses, tiny_cfg

from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.io import load_draft
from specforge_het.data import store
from specforge_het.data.generate import gen_dataset
from specforge_het.export import check_folder, export_draft
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.lookup import LookupProposer
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models.base import BaseModel
from specforge_het.testing import OracleProposer
from specforge_het.train import build_trainer

DEVICE = os.environ.get("SPECFORGE_HET_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (SPECFORGE_HET_TEST_DEVICE=cpu runs these tests on CPU)")
FAMILIES = ("llama", "qwen3", "gemma3")
N_NEW = 40
TREES = {
    "chain4": TreeSpec("chain", max_depth=4),
    "static_k2_d3": TreeSpec("static", static_tree="tree_k2_d3"),
    "dynamic": TreeSpec("dynamic", max_depth=4, top_k=3, total_tokens=10),
}


def on_device(module: torch.nn.Module) -> bool:
    return all(p.device.type == torch.device(DEVICE).type for p in module.parameters())


@pytest.fixture(scope="module")
def device_bases(base_dirs):
    """The tiny bases (float32) loaded onto the device under test."""
    return {fam: BaseModel.load(path, device=DEVICE) for fam, path in base_dirs.items()}


@pytest.fixture(scope="module")
def cpu_greedy(bases, long_ids):
    """family -> base-only greedy tokens on CPU (gemma3's window of 16 slides during the 40 tokens)."""
    return {fam: Decoder(bases[fam]).generate(long_ids, N_NEW).tokens for fam in FAMILIES}


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("fast_paths", ["auto", "off"])
@pytest.mark.parametrize("kind", list(DRAFT_KINDS))
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_speculative_equals_base_only(device_bases, cpu_greedy, long_ids, tok_b_dir, family, kind, fast_paths):
    base = device_bases[family]
    assert on_device(base.model)
    plain = Decoder(base, fast_paths=fast_paths).generate(long_ids, N_NEW)
    assert plain.tokens == cpu_greedy[family]
    draft = build_draft(draft_modeling(**DRAFT_KINDS[kind], tok_dir=tok_b_dir), base, seed=0).eval()
    assert on_device(draft)
    for name, tree in TREES.items():
        res = Decoder(base, DraftProposer(draft, tree), fast_paths=fast_paths).generate(long_ids, N_NEW)
        assert res.tokens == plain.tokens, name
    lookup = LookupProposer(DraftProposer(draft, TREES["dynamic"]), num_tokens=3, device=base.device)
    res = Decoder(base, lookup, fast_paths=fast_paths).generate(long_ids, N_NEW)
    assert res.tokens == plain.tokens, "with the lookup branch"


@pytest.mark.parametrize("fast_paths", ["auto", "off"])
@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_accepts_full_depth(device_bases, cpu_greedy, long_ids, family, fast_paths):
    base = device_bases[family]
    res = Decoder(base, OracleProposer(base, TREES["chain4"]), fast_paths=fast_paths).generate(long_ids, N_NEW)
    assert res.tokens == cpu_greedy[family]
    assert res.accept_lengths[:-1] == [5] * (res.steps - 1)


@pytest.mark.parametrize("proposer", ["random_draft", "oracle"])
def test_speculative_sampling_is_lossless(base_dirs, tok_a, short_ids, proposer):
    """Runs sampled on the device (its own generator) follow the exact base distribution computed on CPU."""
    s, length = CASES["t0.8_topk5_topp0.9"]
    cpu = sharpened_base(base_dirs["llama"], tok_a)
    dev = sharpened_base(base_dirs["llama"], tok_a)
    dev.model.to(DEVICE)
    if proposer == "oracle":
        prop = OracleProposer(dev, TreeSpec("static", static_tree="tree_k2_d3"))
    else:
        draft = build_draft(draft_modeling(**DRAFT_KINDS["eagle_v3_reduced"]), dev, seed=0).eval()
        prop = DraftProposer(draft, TreeSpec("dynamic", max_depth=3, top_k=3, total_tokens=8))
    decoder = Decoder(dev, prop, s, torch.Generator(DEVICE).manual_seed(SEED))
    exact = exact_sequences(cpu, short_ids, s, decoder.eos, length)
    counts, taus = sample_runs(decoder, short_ids, length, RUNS)
    assert sum(counts.values()) == RUNS
    assert_follows_base(counts, exact, length)
    half = exact_sequences(cpu, short_ids, type(s)(s.temperature / 2, s.top_p, s.top_k), decoder.eos, length)
    assert fit_pvalue(counts, half) < ALPHA  # the statistic can fail: half the temperature is rejected
    assert Counter(t == 1 for t in taus)[True] / RUNS > 0.05  # every draft token rejected, sometimes
    if proposer == "oracle":
        assert sum(t >= 2 for t in taus) / RUNS > 0.2  # draft tokens accepted, often


def test_cli_compare_on_the_device(base_dirs, tmp_path):
    prompts = tmp_path / "q.jsonl"
    prompts.write_text("".join(f'{{"question_id": {i}, "turns": ["{p}"]}}\n' for i, p in enumerate(USER_PROMPTS[:3])))
    args = ["--modeling.base_model", base_dirs["llama"], "--modeling.device", DEVICE, "--modeling.draft_family",
            "qwen3", "--modeling.draft_hidden_size", "48", "--modeling.draft_vocab_size", "100", "--inference.compare",
            "--inference.max_new_tokens", "16", "--prompts", str(prompts), "--outfile", str(tmp_path / "out.jsonl")]
    proc = subprocess.run([sys.executable, "-m", "specforge_het.inference", *args], cwd=REPO,
                          env=subprocess_env(HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "identical outputs: 3/3" in proc.stdout


# ---------------------------------------------------------------- training and export


@pytest.mark.parametrize("name", ["eagle_v2", "eagle_v3", "v3_foreign_w48"])
def test_training_on_the_device_gives_the_cpu_losses(name, base_dirs, conv_file, tok_b_dir, tmp_path):
    """float32: HF Trainer on the device gives the pinned CPU losses; the trained draft is saved and loads."""
    kw = dict(PRESETS[name], device=DEVICE)
    if kw["vocab"] == "foreign":
        kw["draft_tokenizer"] = tok_b_dir
    trainer, _ = build_trainer(tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "run", **kw), [])
    assert trainer.args.device.type == torch.device(DEVICE).type
    trainer.train()
    assert _losses(trainer) == pytest.approx(PINNED[name], rel=2e-3)


@pytest.mark.parametrize("algorithm", ["eagle_v2", "eagle_v3"])
def test_bf16_training_then_decoding_and_export(algorithm, base_dirs, conv_file, device_bases, long_ids, cpu_greedy,
                                                tmp_path):
    """bf16 autocast (float32 master weights) on the device: finite losses; the saved draft decodes losslessly
    on the device and exports to an engine folder that passes the contract."""
    kw = dict(PRESETS[algorithm], device=DEVICE)
    if algorithm == "eagle_v2":
        kw["draft_first_input_norm"] = False  # the EAGLE-1/2 layout (what the eagle_v2 preset sets)
    else:
        kw["feature_layers"] = [1, 2, 3]  # engines feed exactly three base layers
    cfg = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "run", **kw)
    cfg.training.precision = "bf16"
    cfg.training.gradient_checkpointing = True  # bf16 is where cuDNN attention could be picked, and recomputed
    trainer, _ = build_trainer(cfg, [])
    trainer.train()
    trainer.save_model(str(tmp_path / "run"))
    assert all(torch.isfinite(torch.tensor(_losses(trainer))))
    base = device_bases["llama"]
    draft = load_draft(tmp_path / "run", base).eval()
    assert on_device(draft)
    res = Decoder(base, DraftProposer(draft, TREES["dynamic"])).generate(long_ids, N_NEW)
    assert res.tokens == cpu_greedy["llama"]
    fmt = "sglang-eagle3" if algorithm == "eagle_v3" else "sglang-eagle"
    out = export_draft(draft, tmp_path / fmt, fmt, verifier=base_dirs["llama"])
    assert check_folder(out, fmt) == []


# ---------------------------------------------------------------- data generation


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_gen_dataset_on_the_device_equals_cpu(family, base_dirs, prompts, tmp_path):
    """float32 greedy: the same rows as on CPU, and the stored (bfloat16) features agree to bf16 rounding."""
    runs = {}
    for name, device in (("cpu", "cpu"), ("dev", DEVICE)):
        cfg = make_cfg(base_dirs[family], tmp_path / name, batch_size=2, max_new_tokens=16, store_features=True)
        cfg.modeling.device = device
        gen_dataset(cfg, [], prompts)
        runs[name] = rows_of(tmp_path / name)
    assert runs["dev"] == runs["cpu"] and len(runs["cpu"]) == 6
    for r in runs["cpu"]:
        got, ref = store.load_features(tmp_path / "dev", r["index"]), store.load_features(tmp_path / "cpu", r["index"])
        torch.testing.assert_close(got.float(), ref.float(), rtol=1.6e-2, atol=1.6e-2)


def test_gen_dataset_bf16_auto_dtype_on_the_device(base_dirs, prompts, tmp_path):
    """dtype auto picks bfloat16 on CUDA; rows are complete (finish reasons recorded)."""
    cfg = make_cfg(base_dirs["llama"], tmp_path / "bf16", batch_size=4, max_new_tokens=16)
    cfg.modeling.device, cfg.dataset_generation.dtype = DEVICE, "auto"
    gen_dataset(cfg, [], prompts)
    meta = store.read_meta(tmp_path / "bf16")
    rows = rows_of(tmp_path / "bf16")
    assert len(rows) == 6 and all(r["finish_reason"] in ("stop", "length") for r in rows)
    if DEVICE.startswith("cuda"):
        assert "bfloat16" in str(meta.get("dtype", meta))


def test_no_cudnn_attention_on_the_device(device_bases, long_ids, tok_b_dir, monkeypatch):
    """bf16 on the device: no SDPA call of a speculative decode or of a checkpointed EagleV3 training step
    (backward's recomputation included) may run with cuDNN attention allowed (a graph build per key length)."""
    if not DEVICE.startswith("cuda"):
        pytest.skip("the restriction applies on CUDA only (tests/test_sdpa_plan.py checks it on CPU)")
    from test_sdpa_plan import _record_cudnn_flag

    from specforge_het.config import Config
    from specforge_het.training.trainer import DraftTrainingModule

    seen = _record_cudnn_flag(monkeypatch)  # (it also restricts "cpu": no effect here, every call is on the device)
    base = BaseModel.load(device_bases["llama"].name, dtype="bfloat16", device=DEVICE)
    modeling = draft_modeling(**DRAFT_KINDS["eagle_v3_reduced"], tok_dir=tok_b_dir)
    Decoder(base, DraftProposer(build_draft(modeling, base, seed=0).eval(), TREES["dynamic"])).generate(long_ids, 8)
    t = Config().training
    t.gradient_checkpointing = True
    module = DraftTrainingModule(build_draft(modeling, base, seed=0).train(True), base, t)
    ids = long_ids.to(DEVICE)
    out = module(ids, torch.ones_like(ids), torch.ones_like(ids))
    calls = len(seen)
    (out["loss"] / out["count"]).backward()
    assert len(seen) > calls > 0 and not any(seen)
