"""Session 28 probe: inductor's C++ GEMM template (max-autotune, frozen weights) against our few-row kernels,
over 30 copies of a layer's weights (as a forward streams them), M = 1, 6, 8 rows (or the row counts given).
    .venv/bin/python runs/s28/cppgemm_probe.py [M ...]
Session 30 ran it at data generation's row counts: `runs/s28/cppgemm_probe.py 64 128 256` (runs/s30/cppgemm_rows.log)."""
import sys, time, warnings
import torch
import torch._inductor.config as icfg
from specforge_het.models import linears
warnings.filterwarnings("ignore")
icfg.freezing = True
icfg.max_autotune = True
icfg.max_autotune_gemm_backends = "CPP,ATEN"
torch.manual_seed(0)
L = 30

class Stack(torch.nn.Module):
    def __init__(self, k, n):
        super().__init__()
        self.ls = torch.nn.ModuleList(torch.nn.Linear(k, n, bias=False) for _ in range(L))
    def forward(self, xs):
        return [l(x) for l, x in zip(self.ls, xs)]

def t(f, n=20):
    for _ in range(3): f()
    s = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - s) / n * 1e3

for k, n in ((576, 3072), (1536, 576), (576, 960)):
    m_ = Stack(k, n).eval().requires_grad_(False)
    for M in [int(a) for a in sys.argv[1:]] or (1, 6, 8):
        xs = [torch.randn(M, k) for _ in range(L)]
        eager = t(lambda: m_(xs))
        with linears.packed_linears(m_):
            ours = t(lambda: m_(xs))
        with torch.no_grad():
            c = torch.compile(m_, dynamic=False)
            c(xs)
            comp = t(lambda: c(xs))
            ok = all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(c(xs), m_(xs)))
        print(f"[{n},{k}] x{L} M={M}: F.linear {eager:.2f} ms, ours {ours:.2f}, inductor cpp {comp:.2f} (close {ok})", flush=True)
        torch._dynamo.reset()
