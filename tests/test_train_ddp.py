"""DDP through HF Trainer: 2 CPU processes (gloo) == 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import subprocess_env
from safetensors.torch import load_file

ANSWER = "The quick brown fox jumps over the lazy dog."


def _conversations(path) -> None:
    # same assistant text everywhere and a draft vocabulary covering the whole base vocabulary:
    # every row has the same number of loss positions, so the per-token mean over a global batch
    # equals the mean of the two per-process means that DDP averages
    prompts = ["Tell me about the fox.", "What is the capital of France?", "Write a poem.", "Count to ten."]
    with open(path, "w") as fh:
        for i, p in enumerate(prompts):
            fh.write(json.dumps({"id": f"d{i}", "conversations": [{"role": "user", "content": p},
                                                                  {"role": "assistant", "content": ANSWER}]}) + "\n")


def _args(base_dir, data, out, batch):
    return ["-m", "specforge_het.train", "--modeling.base_model", base_dir, "--@eagle_v3",
            "--modeling.draft_vocab_size", "300", "--training.logging_steps", "1", "--eagle_v3.ttt_steps", "2", "--dataset.path", str(data),
            "--dataset.eval_fraction", "0", "--training.output_dir", str(out), "--training.max_steps", "2",
            "--training.per_device_batch_size", str(batch), "--training.learning_rate", "1e-3",
            "--training.warmup_ratio", "0", "--training.save_steps", "1000",
            # float32: the comparison is exact to 1e-5; `precision auto` would pick bfloat16 on a CPU with AMX
            "--training.precision", "fp32"]


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                    reason="torchrun not installed with torch")
def test_ddp_two_processes_equal_one_process(base_dirs, tmp_path):
    data = tmp_path / "conv.jsonl"
    _conversations(data)
    env = subprocess_env()
    one = subprocess.run([sys.executable, *_args(base_dirs["llama"], data, tmp_path / "one", 2)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533",
                          *_args(base_dirs["llama"], data, tmp_path / "two", 1), "--training.ddp_backend", "gloo"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    losses = [[e["loss"] for e in json.loads((tmp_path / d / "training_log.json").read_text()) if "loss" in e]
              for d in ("one", "two")]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-5)
