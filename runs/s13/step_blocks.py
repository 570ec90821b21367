# Session 13: one decode step of 128 rows, synthetic lengths, attention blocks of R slots (R = 128: one call).
# Run from the repository root: .venv/bin/python runs/s13/step_blocks.py
import torch, time, sys
torch.set_num_threads(2)
from specforge_het.models.base import BaseModel
import specforge_het.data.batch_gen as bg
base = BaseModel.load("smollm2-135m-instruct", "bfloat16", "cpu", "sdpa")
n = 128
g = torch.Generator().manual_seed(0)
gen = bg.BatchGenerator(base, n, [2], 1200)
toks = torch.randint(0, 49152, (n,), generator=g)
for case in ("uniform", "outlier"):
    lens = 80 + torch.randint(0, 250, (n,), generator=g)
    if case == "outlier": lens[37] = 1000
    for R in (128, 32, 16, 8):
        gen.attn_rows = R
        f = lambda: gen._step(toks, lens)
        f()
        t=time.perf_counter()
        for _ in range(4): f()
        dt=(time.perf_counter()-t)/4
        print(f"{case} rows/call={R} step {dt*1000:.1f} ms -> {n/dt:.0f} tok/s", flush=True)
