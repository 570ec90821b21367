"""`python -m specforge_het.doctor --tiny`: the GPU self-check at toy size on CPU (what CI runs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from specforge_het.doctor import __main__ as doctor
from specforge_het.doctor import checks


def run(tmp_path, **kw) -> dict:
    out = tmp_path / "doctor.json"
    doctor.main(tiny=True, device="cpu", out=str(out), new_tokens=12, **kw)
    return json.loads(out.read_text())


def test_tiny_doctor_runs_every_check_and_writes_json(tmp_path):
    record = run(tmp_path)
    by_name = {c["name"]: c for c in record["checks"]}
    assert list(by_name) == ["kernels", "prefill", "decode", "syncs", "train", "export", "engine"]
    assert record["ok"] is True
    assert all(by_name[n]["ok"] is True for n in ("kernels", "prefill", "decode", "syncs", "train", "export"))
    assert by_name["engine"]["ok"] is None and "not run" in by_name["engine"]["value"]  # no sglang, no CUDA
    # the kernels were recorded from real calls: a plain prefill is causal without a mask (issue 14 item 3),
    # a tree verification is masked
    examples = by_name["kernels"]["detail"]["examples"]
    assert set(examples) == {"prefill", "decode", "tree verify"}
    assert examples["prefill"]["is_causal"] and not examples["prefill"]["mask"]
    assert examples["tree verify"]["mask"] and examples["tree verify"]["q"][2] > 1
    assert by_name["decode"]["detail"]["identical"] is True and by_name["decode"]["detail"]["dtype"] == "float32"
    assert by_name["syncs"]["detail"]["max_per_step"] <= checks.MAX_SYNCS
    assert by_name["syncs"]["detail"]["steps"] > 0
    train = by_name["train"]["detail"]
    assert train["gradient_checkpointing"] is True and train["precision"] == "bf16"  # the gpu preset's settings
    assert train["draft_dtype"] == "float32"
    export = by_name["export"]["detail"]
    assert export["problems"] == [] and export["max_position_embeddings"] == 131072  # the base's context
    assert export["rope_scaling"]["rope_type"] == "llama3"
    assert record["environment"]["torch"] == torch.__version__ and record["model"]["dtype"] == "float32"


def test_a_failing_check_fails_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "MAX_SYNCS", 0)  # one read per step is now too many
    with pytest.raises(SystemExit) as e:
        run(tmp_path, engine=False)
    assert e.value.code == 1
    record = json.loads((tmp_path / "doctor.json").read_text())
    syncs = next(c for c in record["checks"] if c["name"] == "syncs")
    assert syncs["ok"] is False and record["ok"] is False
    assert "engine" not in [c["name"] for c in record["checks"]]


def test_an_exception_is_that_checks_failure_only():
    def boom():
        raise RuntimeError("CUDA out of memory")

    [c] = checks.guarded("train", boom)
    assert c.ok is False and "out of memory" in c.value


def test_math_kernel_calls_fail_the_kernel_check_on_cuda_only():
    calls = [{"phase": "prefill", "kernel": "MATH"}, {"phase": "prefill", "kernel": "MATH"},
             {"phase": "decode", "kernel": "FLASH_ATTENTION"}, {"phase": "tree verify", "kernel": "EFFICIENT_ATTENTION"}]
    ok, per_phase, math_calls = checks.kernel_verdict(calls, "cuda")
    assert not ok and math_calls == 2
    assert per_phase == {"prefill": ["MATH"], "decode": ["FLASH_ATTENTION"], "tree verify": ["EFFICIENT_ATTENTION"]}
    assert checks.kernel_verdict(calls[2:], "cuda")[0] is True
    assert checks.kernel_verdict(calls, "cpu")[0] is True  # reported, not judged, off CUDA


def test_full_size_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full doctor would run")
    res = subprocess.run([sys.executable, "-m", "specforge_het.doctor", "--device", "cpu"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode != 0 and "--tiny" in res.stderr


@pytest.mark.parametrize(("argv", "want"), [(["--tiny", "false"], (False, True)), (["--tiny", "--engine", "no"], (True, False)),
                                            (["--tiny=True", "--engine=0"], (True, False))])
def test_command_line_bool_flags(monkeypatch, argv, want):
    """fire passes `--tiny false` as the string 'false'; the doctor's command line reads it as False."""
    import inspect

    import fire

    got, sig = [], inspect.signature(doctor.main)

    def fake(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        got.append((bound.arguments["tiny"], bound.arguments["engine"]))

    monkeypatch.setattr(doctor, "main", fake)
    fire.Fire(doctor.cli, command=argv)
    assert got == [want]
