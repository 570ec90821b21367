"""`python -m specforge_het.doctor`: one command that says whether this machine runs our GPU paths right.

    python -m specforge_het.doctor                 # on a CUDA machine: Llama-3.1-8B-shaped random base, bf16
    python -m specforge_het.doctor --tiny          # the same checks at toy size (CPU, float32; run in CI)

Prints a table (one row per check: ok / FAIL / not run, and the figure) and writes JSON (--out). Exit
status 1 when a check fails. What each check measures: specforge_het/doctor/checks.py.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import fire
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from specforge_het.doctor.checks import (
    LLAMA_8B,
    TINY,
    Check,
    build_base,
    build_eagle3_draft,
    check_decode_and_syncs,
    check_export,
    check_kernels_and_prefill,
    check_train_step,
    guarded,
)

console = Console(stderr=True)
# the engine probe's base: small enough to save and load in seconds, Llama-shaped like the checked one
ENGINE_BASE = dict(LLAMA_8B, vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=64)


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": version("transformers"),
           "sglang": version("sglang"), "device": str(device), "cuda": torch.version.cuda}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                   bf16=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version())
    else:
        env.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return env


def engine_check(device: torch.device, timeout_s: int) -> Check:
    """A small saved Llama + its exported EAGLE-3 draft through sglang.Engine (needs sglang and CUDA)."""
    if version("sglang") is None:
        return Check("engine", None, "not run: sglang is not installed (pip install 'specforge_het[sglang]' in "
                                     "its own environment, or the SGLang image: ./docker_utils.sh build sglang)")
    if device.type != "cuda":
        return Check("engine", None, "not run: SGLang needs CUDA")
    from specforge_het.export import export_draft

    with tempfile.TemporaryDirectory() as tmp:
        base = build_base(ENGINE_BASE, device, torch.bfloat16, seed=3)
        base_dir, draft_dir = Path(tmp) / "base", Path(tmp) / "draft"
        base.model.save_pretrained(base_dir)
        export_draft(build_eagle3_draft(base, 4096), draft_dir, "sglang-eagle3", verifier=str(base_dir))
        del base
        torch.cuda.empty_cache()
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "specforge_het.doctor.engine_probe", str(base_dir), str(draft_dir)],
                             capture_output=True, text=True, timeout=timeout_s)
        seconds = round(time.perf_counter() - t0, 1)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        return Check("engine", False, f"sglang.Engine failed (exit {res.returncode}): {res.stderr.strip()[-300:]}",
                     {"stderr_tail": res.stderr[-3000:], "seconds": seconds})
    out = json.loads(lines[-1])
    return Check("engine", bool(out.get("ok")), f"sglang {out.get('sglang')} loaded the exported draft and generated "
                 f"{len(out.get('output_ids', []))} tokens in {out.get('spec_verify_ct')} verify steps ({seconds} s)",
                 {**out, "seconds": seconds})


def run_checks(tiny: bool, device: torch.device, prefill_tokens: int, train_tokens: int, new_tokens: int,
               engine: bool, engine_timeout_s: int) -> tuple[list[Check], dict]:
    shape = TINY if tiny else LLAMA_8B
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    t0 = time.perf_counter()
    base = build_base(shape, device, dtype)
    draft_vocab = 256 if tiny else 32000
    draft = build_eagle3_draft(base, draft_vocab)
    built = {"shape": shape, "dtype": str(dtype).removeprefix("torch."), "build_s": round(time.perf_counter() - t0, 2)}
    checks = guarded("kernels", check_kernels_and_prefill, base, prefill_tokens)
    checks += guarded("decode", check_decode_and_syncs, base, draft, 64 if tiny else 512, new_tokens)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    checks += guarded("train", check_train_step, base, draft_vocab, train_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        checks += guarded("export", check_export, draft, Path(tmp) / "eagle3")
    del base, draft
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if engine:
        checks += guarded("engine", engine_check, device, engine_timeout_s)
    return checks, built


def print_table(checks: list[Check], title: str) -> None:
    table = Table(title=title)
    table.add_column("check")
    table.add_column("result")
    table.add_column("figure")
    for c in checks:
        mark = "[green]ok[/]" if c.ok else "[dim]not run[/]" if c.ok is None else "[red]FAIL[/]"
        table.add_row(c.name, mark, escape(c.value))
    Console().print(table)


def main(tiny: bool = False, device: str = "auto", out: str = "runs/doctor/doctor.json", prefill_tokens: int = 0,
         train_tokens: int = 0, new_tokens: int = 32, engine: bool = True, engine_timeout_s: int = 240) -> None:
    """Check the GPU paths on a random Llama-3.1-8B-shaped base (no download).

    Args:
        tiny: toy-sized model, float32 (what CI runs on CPU).
        device: auto (CUDA when present) | cuda | cuda:N | cpu. Without --tiny a CUDA device is needed.
        out: JSON file written with every figure.
        prefill_tokens: prompt length of the prefill check (0 = 8192; tiny 256).
        train_tokens: sequence length of the training step (0 = 4096, the gpu preset's; tiny 128).
        new_tokens: tokens generated per decode measurement.
        engine: try loading an exported draft in sglang.Engine (when sglang and CUDA are present).
    """
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto"
                       else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("doctor: --device cuda but torch sees no CUDA device (torch.version.cuda = "
                         f"{torch.version.cuda}); install a CUDA build of torch or use --tiny on CPU")
    if not tiny and dev.type != "cuda":
        raise SystemExit("doctor: the full check builds an 8B-shaped model in bfloat16 and needs a CUDA GPU; "
                         "on CPU run `python -m specforge_het.doctor --tiny`")
    prefill_tokens = prefill_tokens or (256 if tiny else 8192)
    train_tokens = train_tokens or (128 if tiny else 4096)
    env = environment(dev)
    t0 = time.perf_counter()
    checks, built = run_checks(tiny, dev, prefill_tokens, train_tokens, new_tokens, engine, engine_timeout_s)
    seconds = round(time.perf_counter() - t0, 1)
    what = "toy Llama" if tiny else "random Llama-3.1-8B shape"
    print_table(checks, f"specforge_het doctor: {what}, {built['dtype']}, {env.get('gpu', env['device'])} ({seconds} s)")
    record = {"tiny": tiny, "environment": env, "model": built, "seconds": seconds,
              "command": " ".join(["python -m specforge_het.doctor", *sys.argv[1:]]),
              "checks": [c.to_json() for c in checks], "ok": all(c.ok is not False for c in checks)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"wrote {out}")
    failed = [c.name for c in checks if c.ok is False]
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/] (details in {out})")
        raise SystemExit(1)


_MAIN_SIGNATURE = inspect.signature(main)


def cli(*args, **kwargs) -> None:
    """main() from the command line: `--tiny false` / `--engine no` read as False (fire passes strings)."""
    from specforge_het.cli import read_flags
    from specforge_het.config import ConfigError

    try:
        args, kwargs = read_flags(_MAIN_SIGNATURE, args, kwargs)
    except ConfigError as e:
        raise SystemExit(f"doctor: {e}") from None
    main(*args, **kwargs)


cli.__signature__ = _MAIN_SIGNATURE  # type: ignore[attr-defined]
cli.__doc__ = main.__doc__


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    fire.Fire(cli)
