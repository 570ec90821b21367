"""Where training runs (one device per process, shared by base and draft), what FSDP / DeepSpeed runs
are refused, draft folders saved from a gathered state, the float32 draft under a bfloat16 base, and
the `gpu` preset. All on CPU: the device plan is a pure function of (env, CUDA device count)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, subprocess_env
from safetensors.torch import load_file

from specforge_het.config import ConfigError, resolve
from specforge_het.training.devices import DevicePlan, check_sharding, check_trainer_device, plan_training_device

ARGS = ["--@smollm2", "--@eagle_v3", "--dataset.path", "data/x"]
TORCHRUN = {"LOCAL_RANK": "3", "RANK": "3", "WORLD_SIZE": "4"}


# ---------------------------------------------------------------- device plan (pure)

@pytest.mark.parametrize("requested,env,count,device", [
    ("cpu", {}, 0, "cpu"),
    ("auto", {}, 0, "cpu"),
    ("auto", {}, 1, "cuda:0"),
    ("cuda", {}, 1, "cuda:0"),
    ("cuda:0", {}, 1, "cuda:0"),
    ("cuda", TORCHRUN, 4, "cuda:3"),  # every rank on its local GPU, not cuda:0
    ("auto", TORCHRUN, 4, "cuda:3"),
    ("cuda:3", TORCHRUN, 4, "cuda:3"),
    ("cpu", TORCHRUN, 0, "cpu"),  # DDP over gloo
    ("cuda", {"LOCAL_RANK": "1", "WORLD_SIZE": "16"}, 8, "cuda:1"),  # multi-node: LOCAL_RANK is per node
])
def test_plan_places_each_process_on_one_device(requested, env, count, device):
    plan = plan_training_device(requested, env, count)
    assert plan.device == device
    assert plan.use_cpu == (device == "cpu")
    assert plan.local_rank == (int(env["LOCAL_RANK"]) if env else None)
    assert plan.world_size == int(env.get("WORLD_SIZE", 1))
    assert plan.warnings == ()


def test_single_process_on_a_multi_gpu_node_is_refused_with_the_torchrun_command():
    for requested in ("cuda", "auto"):
        with pytest.raises(ConfigError) as err:
            plan_training_device(requested, {}, 8, ARGS)
        msg = str(err.value)
        assert "nn.DataParallel" in msg
        assert "torchrun --nproc_per_node 8 -m specforge_het.train --@smollm2 --@eagle_v3 --dataset.path data/x" in msg
        assert "CUDA_VISIBLE_DEVICES=0 python -m specforge_het.train --@smollm2" in msg
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=1 python"):  # cuda:1 would split base (cuda:1) and draft (HF: cuda:0)
        plan_training_device("cuda:1", {}, 2, ARGS)
    with pytest.raises(ConfigError, match="<your arguments>"):
        plan_training_device("cuda", {}, 2)


@pytest.mark.parametrize("requested,env,count,match", [
    ("cuda:1", {}, 1, "only 1 GPU"),
    ("cuda", {}, 0, "no CUDA device"),
    ("cuda", TORCHRUN, 0, "no CUDA device"),
    ("cuda:0", TORCHRUN, 4, "LOCAL_RANK 3"),  # explicit index that is not the rank's GPU
    ("cuda", TORCHRUN, 2, "nproc_per_node 2"),  # more processes than GPUs on the node
    ("mps", {}, 0, "cpu, cuda, cuda:N or auto"),
    ("cuda:x", {}, 1, "cpu, cuda, cuda:N or auto"),
])
def test_plan_refuses_what_cannot_be_placed(requested, env, count, match):
    with pytest.raises(ConfigError, match=match):
        plan_training_device(requested, env, count)


def test_base_sharded_by_device_map_is_one_process_over_the_gpus():
    plan = plan_training_device("cuda", {}, 4, ARGS, device_map="auto")
    assert plan.sharded_base and plan.device == "cuda:0" and plan.local_rank is None  # no DataParallel refusal
    check_trainer_device(plan, "cuda:0", 4)  # HF Trainer resets n_gpu to 1 for a model-parallel module
    with pytest.raises(ConfigError, match="under torchrun every process would spread its own copy"):
        plan_training_device("cuda", TORCHRUN, 4, ARGS, device_map="auto")
    assert not plan_training_device("cpu", {}, 0, device_map="auto").sharded_base


def test_cpu_with_cuda_present_warns():
    plan = plan_training_device("cpu", {}, 2)
    assert plan.device == "cpu" and plan.use_cpu
    assert len(plan.warnings) == 1 and "CUDA is available (2 GPUs)" in plan.warnings[0]
    assert "--modeling.device cuda" in plan.warnings[0]


def test_trainer_device_must_match_the_plan():
    check_trainer_device(DevicePlan("cpu", True, None, 1), torch.device("cpu"), 0)
    check_trainer_device(DevicePlan("cpu", True, 0, 2), "cpu:0", 0)  # accelerate's CPU index is meaningless
    with pytest.raises(ConfigError, match="n_gpu 2"):
        check_trainer_device(DevicePlan("cpu", True, None, 1), "cpu", 2)
    with pytest.raises(ConfigError, match="base was placed on cuda:1"):
        check_trainer_device(DevicePlan("cuda:1", False, 1, 2), "cpu", 0)


def test_real_trainer_arguments_follow_the_plan(monkeypatch):
    from specforge_het.config import Config
    from specforge_het.train import training_arguments

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cfg = Config()
    cfg.training.output_dir = "/nonexistent/never-written"
    plan = plan_training_device("cpu", {}, 0)
    args = training_arguments(cfg, False, plan)
    check_trainer_device(plan, args.device, args.n_gpu)
    assert args.use_cpu and args.n_gpu == 0


# ---------------------------------------------------------------- FSDP / DeepSpeed refusals, the shipped ZeRO-2 config

ZERO2 = REPO / "configs" / "deepspeed_zero2.json"


def test_sharding_needs_torchrun_and_cuda(tmp_path):
    single_gpu = plan_training_device("cuda", {}, 1)
    ranks_cpu = plan_training_device("cpu", TORCHRUN, 0)
    check_sharding("", "", single_gpu)
    with pytest.raises(ConfigError, match="launch with torchrun"):
        check_sharding("full_shard auto_wrap", "", single_gpu)
    with pytest.raises(ConfigError, match="plain DDP instead of FSDP"):  # what accelerate would silently do on CPU
        check_sharding("full_shard auto_wrap", "", ranks_cpu)
    with pytest.raises(ConfigError, match="exclude each other"):
        check_sharding("full_shard", str(ZERO2), single_gpu)
    ranks_gpu = plan_training_device("cuda", TORCHRUN, 4)
    with pytest.raises(ConfigError, match="no such file"):
        check_sharding("", str(tmp_path / "missing.json"), ranks_gpu)
    bad = tmp_path / "bad.json"
    bad.write_text("{'stage': 2}")
    with pytest.raises(ConfigError, match="not valid JSON"):
        check_sharding("", str(bad), ranks_gpu)


def test_shipped_zero2_config():
    config = json.loads(ZERO2.read_text())
    assert config["zero_optimization"]["stage"] == 2
    # HF Trainer fills "auto" from the TrainingArguments (batch, accumulation, clipping, bf16); a number
    # there that disagrees with --training.* would be refused by HF
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping", "train_batch_size"):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto"
    # keys HF would size from model.config.hidden_size: our trained module has no HF config, so never "auto"
    assert all(v != "auto" for v in config["zero_optimization"].values())
    assert "optimizer" not in config and "scheduler" not in config  # HF's AdamW and linear schedule are used


def test_zero2_config_passes_our_checks_and_needs_deepspeed():
    import importlib.util

    ranks_gpu = plan_training_device("cuda", TORCHRUN, 4)
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ConfigError, match="pip install deepspeed"):
            check_sharding("", str(ZERO2), ranks_gpu)
    else:
        check_sharding("", str(ZERO2), ranks_gpu)


# ---------------------------------------------------------------- the gpu preset, draft_dtype

def test_gpu_preset_resolves():
    cfg, names, _ = resolve(["--@smollm2", "--@eagle_v3", "--@gpu"])
    m, t = cfg.modeling, cfg.training
    assert names == ["smollm2", "eagle_v3", "gpu"]
    assert (m.base_model, m.device, m.dtype, m.draft_dtype) == ("smollm2-135m-instruct", "cuda", "bfloat16", "float32")
    assert (t.precision, t.per_device_batch_size, t.gradient_accumulation_steps, t.gradient_checkpointing) == ("bf16", 1, 2, True)
    assert cfg.dataset.max_length == 4096
    out = subprocess.run([sys.executable, "-m", "specforge_het.train", "show", "--@smollm2", "--@gpu"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "modeling.draft_dtype" in out.stdout and "'float32'" in out.stdout and "'bfloat16'" in out.stdout


@pytest.fixture(scope="module")
def conv_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("devices") / "conv.jsonl"
    prompts = ["Tell me about the fox.", "What is the capital of France?", "Write a poem.", "Count to ten."]
    with open(path, "w") as fh:
        for i, p in enumerate(prompts):
            fh.write(json.dumps({"id": f"d{i}", "conversations": [
                {"role": "user", "content": p}, {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}]}) + "\n")
    return path


def test_auto_precision_follows_the_draft_dtype(monkeypatch):
    from specforge_het import train
    from specforge_het.config import Config

    cfg = Config()
    cfg.modeling.dtype = "bfloat16"
    from specforge_het.models import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16", "amx_tile"})
    assert not train.use_bf16(cfg)  # a bfloat16 draft under a bfloat16 base: plain bfloat16, as before
    cfg.modeling.draft_dtype = "float32"
    assert train.use_bf16(cfg)  # float32 master weights: bfloat16 autocast where it is fast
    monkeypatch.setattr(precision, "cpu_flags", lambda: set())
    assert not train.use_bf16(cfg, "cpu")


def _cfg(base_dir, data, out, **kw):
    from tests.test_train import tiny_cfg

    cfg = tiny_cfg(base_dir, data, out, algorithm="eagle_v3", vocab="reduced", draft_vocab_size=150, **kw)
    cfg.training.max_steps, cfg.eagle_v3.ttt_steps = 2, 2
    return cfg


def test_float32_draft_under_bfloat16_base(base_dirs, conv_file, tmp_path):
    from specforge_het.train import build_trainer

    cfg = _cfg(base_dirs["llama"], conv_file, tmp_path / "mixed", dtype="bfloat16", draft_dtype="float32")
    with pytest.raises(ConfigError, match="--training.precision bf16"):  # the draft reads bf16 base tensors: needs autocast
        build_trainer(cfg, [])
    cfg.training.precision = "bf16"
    trainer, _ = build_trainer(cfg, [])
    assert trainer.args.bf16
    base = trainer.model._base[0]
    assert {p.dtype for p in base.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.draft.parameters()} == {torch.float32}
    before = {k: v.clone() for k, v in trainer.model.draft.state_dict().items()}
    trainer.train()
    assert {p.dtype for p in trainer.model.draft.parameters()} == {torch.float32}
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.draft.state_dict().items())
    trainer.save_model(str(tmp_path / "mixed"))
    saved = load_file(str(tmp_path / "mixed" / "model.safetensors"))
    assert {v.dtype for k, v in saved.items() if v.is_floating_point()} == {torch.float32}


def test_device_map_on_cpu_trains(base_dirs, conv_file, tmp_path):
    from specforge_het.train import build_trainer

    cfg = _cfg(base_dirs["llama"], conv_file, tmp_path / "dm", device_map="auto")
    trainer, _ = build_trainer(cfg, [])
    assert not trainer.model._base[0].sharded and getattr(trainer.model, "hf_device_map", None) is None
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.args.n_gpu == 0


def test_draft_dtype_default_keeps_the_base_dtype(base_dirs, conv_file, tmp_path):
    from specforge_het.train import build_trainer

    cfg = _cfg(base_dirs["llama"], conv_file, tmp_path / "same", dtype="bfloat16")
    trainer, _ = build_trainer(cfg, [])
    assert {p.dtype for p in trainer.model.draft.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------- saving a gathered state (FSDP / DeepSpeed)

def test_save_writes_the_state_handed_over(base_dirs, conv_file, tmp_path):
    """HF Trainer hands `_save` the gathered full state under FSDP / DeepSpeed: that is what must be saved,
    not the module's own (local shards there)."""
    from specforge_het.algorithms.io import load_draft
    from specforge_het.models.base import BaseModel
    from specforge_het.train import build_trainer
    from specforge_het.training.trainer import RAW_STATE

    trainer, _ = build_trainer(_cfg(base_dirs["llama"], conv_file, tmp_path / "run"), [])
    assert trainer.model._no_split_modules == ["FusedFirstLayer"]  # FSDP's auto-wrap units (EagleV3, one layer)
    own = trainer.model.draft.state_dict()
    gen = torch.Generator().manual_seed(1)
    handed = {f"draft.{k}": (torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()) for k, v in own.items()}
    trainer._save(str(tmp_path / "saved"), state_dict=handed)
    for name in ("model.safetensors", RAW_STATE):
        saved = load_file(str(tmp_path / "saved" / name))
        assert saved.keys() == own.keys()
        for k, v in saved.items():
            torch.testing.assert_close(v, handed[f"draft.{k}"], rtol=0, atol=0, msg=k)
    draft = load_draft(tmp_path / "saved", BaseModel.load(base_dirs["llama"]))
    torch.testing.assert_close(draft.fc.weight, handed["draft.fc.weight"], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="missing"):
        trainer._save(str(tmp_path / "bad"), state_dict={k: v for k, v in handed.items() if k != "draft.fc.weight"})


def test_lora_merge_from_a_handed_state_equals_peft(bases):
    from specforge_het.algorithms.build import build_draft
    from specforge_het.config import ModelingConfig
    from specforge_het.models.build import add_lora, merged_state_dict

    draft = build_draft(ModelingConfig(algorithm="eagle_v3", vocab="reduced", draft_vocab_size=120), bases["llama"])
    add_lora(draft, 4)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if "lora_B" in name:
                p.normal_()  # peft starts B at zero: make the delta non-trivial
    ours = merged_state_dict(draft, draft.state_dict())
    peft = merged_state_dict(draft)
    assert ours.keys() == peft.keys() and not any(".lora_" in k for k in ours)
    lora_weights = {k.replace(".base_layer.", "."): v for k, v in draft.state_dict().items() if ".base_layer.weight" in k}
    assert lora_weights and all(not torch.equal(peft[k], v) for k, v in lora_weights.items())  # the delta is there
    for k in peft:
        torch.testing.assert_close(ours[k], peft[k], msg=k)


def test_fsdp2_sharded_step_saves_the_gathered_draft(base_dirs, conv_file, tmp_path):
    """2 CPU processes (gloo): FSDP2 wrapping from `_no_split_modules` by accelerate's policy, one sharded
    SGD step == the plain step, and the gathered state saved by DraftTrainer._save (tests/fsdp_worker.py)."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed with torch")
    out = tmp_path / "fsdp"
    env = subprocess_env()
    run = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29541",
                          str(Path(__file__).parent / "fsdp_worker.py"), base_dirs["llama"], str(conv_file), str(out)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    results = [json.loads(line[len("RESULT "):]) for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        assert r["no_split"] == ["FusedFirstLayer"] and r["wrapped"] == ["FSDPFusedFirstLayer"]
        assert r["local_rows"] == r["rows"] // 2  # each rank holds half: saving the module's own state would be wrong
        assert r["shard_loss"] == pytest.approx(r["ref_loss"], rel=1e-6)
    ref = load_file(str(out / "reference.safetensors"))
    for name in ("model.safetensors", "training_state.safetensors"):
        saved = load_file(str(out / name))
        assert saved.keys() == ref.keys(), name
        for k in ref:
            assert saved[k].shape == ref[k].shape, k
            torch.testing.assert_close(saved[k], ref[k], atol=1e-6, rtol=1e-5, msg=k)
