"""Session 27: weight-read bandwidth of 1- and 8-row float32 linears per weight shape on this host, F.linear
against oneDNN on a reordered weight and the swapped GEMM (models/linears.py kernels); ~400 MB of copies of each
weight streamed per pass, best of 4. Prints GB/s of weight read.
    .venv/bin/python runs/s27/gemv_bw.py > runs/s27/gemv_bw.log
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from specforge_het.models.linears import _pack, _run_packed, swapped_linear

torch.manual_seed(0)
for o, i in ((576, 576), (192, 576), (1536, 576), (960, 576), (3072, 576), (576, 1536), (49152, 576)):
    n = max(2, int(400e6 / (o * i * 4)))
    ws = [torch.randn(o, i) for _ in range(n)]
    packs = [_pack(w, 0) for w in ws]
    for rows in (1, 8):
        x = torch.randn(rows, i)
        kernels = {"linear": lambda w, p, x=x: F.linear(x, w), "onednn": lambda w, p, x=x: _run_packed(x, p, w, None, 0),
                   "swapped": lambda w, p, x=x, rows=rows: swapped_linear(x, w, None, rows)}
        res = {}
        for name, fn in kernels.items():
            best = 1e9
            for _ in range(4):
                t = time.perf_counter()
                for w, p in zip(ws, packs):
                    fn(w, p)
                best = min(best, time.perf_counter() - t)
            res[name] = o * i * 4 * n / best / 1e9
        print(f"{o}x{i} rows {rows}: " + "  ".join(f"{k} {v:.1f} GB/s" for k, v in res.items()), flush=True)
    del ws, packs
