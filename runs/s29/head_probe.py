"""Session 29: the draft's logits (final norm + 8192-row head + log-softmax) and the base's LM head (49152 rows), eager
against one inductor graph on frozen weights (freezing + max_autotune, C++ GEMM), and the cost of dynamo's guard
check per compiled call (default stance vs skip_guard_eval_unsafe). Interleaved repeats; medians in ms.
    .venv/bin/python runs/s29/head_probe.py"""
import statistics
import time

import torch
from torch.fx.experimental import _config as fx_config

from specforge_het.algorithms.io import load_draft
from specforge_het.models.base import BaseModel

torch.manual_seed(0)
base = BaseModel.load("smollm2-135m-instruct")
draft = load_draft("specforge_het/drafts/smollm2-135m-instruct-eagle3", base).eval()
OPTS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


class DraftTail(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm, self.head = d.norm, d.lm_head

    def forward(self, h):
        return torch.log_softmax(self.head(self.norm(h)).float(), -1)


class BaseHead(torch.nn.Module):
    def __init__(self, b):
        super().__init__()
        self.head = b.lm_head

    def forward(self, h):
        return self.head(h).argmax(-1)


def compiled(mod):
    g = torch.compile(mod.eval(), dynamic=True)

    def call(x):
        with torch._inductor.config.patch(OPTS), fx_config.patch(use_duck_shape=False):
            return g(x)
    return call


def timeit(fn, x, n=30):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


with torch.no_grad():
    for name, mod in (("draft logits", DraftTail(draft)), ("base head+argmax", BaseHead(base))):
        c = compiled(mod)
        t0 = time.perf_counter()
        for r in (1, 2):
            c(torch.randn(r, 576))
        print(f"{name}: compiled in {time.perf_counter() - t0:.0f} s", flush=True)
        for rows in (1, 4, 12):
            x = torch.randn(rows, 576)
            ref = mod(x)
            out = c(x)
            same = torch.equal(ref, out) if ref.dtype == torch.long else float((ref - out).abs().max())
            res = {"eager": [], "compiled": [], "compiled, skip guards": []}
            for _ in range(5):
                res["eager"].append(timeit(mod, x))
                res["compiled"].append(timeit(c, x))
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    res["compiled, skip guards"].append(timeit(c, x))
            print(f"  {rows:2d} rows: " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in res.items())
                  + f" (agree: {same})", flush=True)
