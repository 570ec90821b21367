"""`python -m specforge_het.bench.linears`: what the few-row linears fast path buys on this host.

Times one pass over every `nn.Linear` of the base's decoder layers and, as its own row, the LM head
(the weights stream from memory as in a real forward) for a few row counts: plain `F.linear` against
the few-row path that `--inference.fast_paths auto` applies (models/linears.py: the kernel measured
fastest per shape and row bucket), best of N. Prints a table and writes JSON with the kernels chosen.
A speculative step verifies ~4-16 rows, a base-only step 1: the `vs 1 row` columns say what a
verify costs relative to a plain decoding step. `layers fused`: the same layers with q/k/v and gate/up
each as one linear, as the decoder runs them (models/fused.py); its `vs 1 row` columns are relative
to the unfused layers' plain 1-row pass.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from specforge_het.models import linears as fast
from specforge_het.models.fused import fused_projections

console = Console()


def _pass_ms(linears: list[nn.Linear], rows: int, reps: int, packed: bool) -> float:
    """Best-of-`reps` time (ms) of one pass over `linears` on `rows` rows, packed or plain."""
    xs = {n: torch.randn(1, rows, n) for n in {m.in_features for m in linears}}
    routed = fast.pack_linears(nn.ModuleList(linears)) if packed else []
    best = float("inf")
    try:
        with torch.no_grad():
            for m in linears:  # first use chooses the kernel (not timed)
                m(xs[m.in_features])
            for _ in range(reps):
                t = time.perf_counter()
                for m in linears:
                    m(xs[m.in_features])
                best = min(best, time.perf_counter() - t)
    finally:
        fast.unpack_linears(routed)
    return best * 1e3


def measure(linears: list[nn.Linear], rows: tuple[int, ...], reps: int, one: float | None = None) -> list[dict]:
    """Per row count: plain and packed pass times, and each relative to a plain 1-row pass (of `linears`,
    or `one` ms)."""
    one = one or _pass_ms(linears, 1, reps, packed=False)
    out = []
    for r in rows:
        plain, packed = _pass_ms(linears, r, reps, False), _pass_ms(linears, r, reps, True)
        out.append({"rows": r, "plain_ms": round(plain, 2), "packed_ms": round(packed, 2),
                    "plain_vs_1row": round(plain / one, 3), "packed_vs_1row": round(packed / one, 3),
                    "speedup": round(plain / packed, 3)})
    return out


def main(model: str = "smollm2-135m-instruct", rows: str | tuple = "1,2,4,8,16", reps: int = 7,
         outfile: str = "docs/results/linears.json") -> None:
    """Time the base's linears and LM head, plain vs the few-row path, for ROWS (comma-separated row counts); writes OUTFILE."""
    from specforge_het.models.base import BaseModel

    base = BaseModel.load(model)
    base.train(False)
    layers = [m for m in base.layers.modules() if type(m) is nn.Linear]
    parts = rows if isinstance(rows, (tuple, list)) else str(rows).split(",")  # fire gives "1,4,16" as a tuple
    counts = tuple(int(r) for r in parts if str(r).strip())
    groups = {"layers": layers}
    with fused_projections(base.layers) as (fused, replaced):  # the fused linears outlive the block (cached)
        if fused:
            gone = {id(m) for m in replaced}
            groups["layers fused"] = fused + [m for m in layers if id(m) not in gone]
    head = getattr(base, "lm_head", None)
    if type(head) is nn.Linear:
        groups["lm_head"] = [head]
    results = {}
    table = Table(title=f"{model}: float32, {torch.get_num_threads()} threads, best of {reps}; "
                        "fast = the few-row path (kernel measured per shape)")
    for col in ("linears", "rows", "plain ms", "fast ms", "plain vs 1 row", "fast vs 1 row", "fast speed-up"):
        table.add_column(col, justify="right")
    one = _pass_ms(layers, 1, reps, packed=False)  # the `vs 1 row` reference of both layer groups
    for name, mods in groups.items():
        results[name] = measure(mods, counts, reps, None if name == "lm_head" else one)
        for r in results[name]:
            table.add_row(f"{name} ({len(mods)})", str(r["rows"]), f"{r['plain_ms']:.1f}", f"{r['packed_ms']:.1f}",
                          f"{r['plain_vs_1row']:.2f}×", f"{r['packed_vs_1row']:.2f}×", f"{r['speedup']:.2f}×")
    console.print(table)
    out = Path(outfile)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"command": "python -m specforge_het.bench.linears " + " ".join(sys.argv[1:]), "model": model,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "mkl_packing": fast.mkl_packing_available(), "results": results["layers"],
            "layers_fused": results.get("layers fused"), "lm_head": results.get("lm_head"),
            "kernels": fast.kernel_choices()}
    out.write_text(json.dumps(info, indent=1) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
