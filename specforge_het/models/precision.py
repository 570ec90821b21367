"""Which dtype computes fastest on this device: one answer for data generation (`dtype auto`) and
training (`precision auto`).

- CUDA: bfloat16 where the GPU supports it, else float16.
- A CPU with AMX-BF16 tiles: bfloat16 (3-8x float32 on large GEMMs, docs/results.md).
- A CPU with AVX512-BF16 but no AMX: it depends on the chip. On one such host bfloat16 GEMMs ran at
  ~60 % of float32; on another (AMD EPYC, family 26) bfloat16 data generation ran 1.76x faster than
  float32. So we measure: `bf16_gemm_speedup` times one GEMM of generation/training size in both
  dtypes once per process (~0.1 s) and bfloat16 wins when it is at least BF16_MIN_SPEEDUP times faster.
- Any other CPU: float32.
"""

from __future__ import annotations

import functools
import time

import torch

BF16_MIN_SPEEDUP = 1.3  # a clear win only: the machine is noisy and float32 is the exact choice
PROBE_SHAPE = (512, 1024, 1024)  # rows x in x out: between a generation step and a training batch


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _timed_mm(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    torch.mm(a, b)
    return time.perf_counter() - start


@functools.lru_cache(maxsize=1)
def bf16_gemm_speedup(reps: int = 5) -> float:
    """float32 time / bfloat16 time of one PROBE_SHAPE GEMM on this CPU: both dtypes warmed up, then
    timed in turn `reps` times (so a burst of load from elsewhere hits both), best of each. Measured
    once per process."""
    rows, k, n = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, k, generator=gen), torch.randn(k, n, generator=gen)
    a16, b16 = a.bfloat16(), b.bfloat16()
    torch.mm(a, b), torch.mm(a16, b16)
    f32 = b16_ = float("inf")
    for _ in range(reps):
        f32, b16_ = min(f32, _timed_mm(a, b)), min(b16_, _timed_mm(a16, b16))
    return f32 / max(b16_, 1e-9)


def cpu_has_fast_bf16() -> bool:
    """True on AMX-BF16; on AVX512-BF16 without AMX, when bfloat16 measured at least BF16_MIN_SPEEDUP x
    float32 here; else False (no bfloat16 instructions: emulated, slow)."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return True
    return "avx512_bf16" in flags and bf16_gemm_speedup() >= BF16_MIN_SPEEDUP


def fast_bf16(device: str | torch.device) -> bool:
    """bfloat16 matmuls that beat float32 on `device` ('auto' = CUDA when there is one, else the CPU)."""
    name = str(device)
    if name.startswith("cuda") or name == "auto" and torch.cuda.is_available():
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def fastest_dtype(device: str | torch.device) -> str:
    """'bfloat16' where `device` computes it fast, else 'float32' (CUDA without bf16: 'float16')."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if device.type == "cpu" and cpu_has_fast_bf16() else "float32"
