"""Session 27: what the fused operations (models/fused.py) buy a decoding step, A/B in one process.

The shipped SmolLM2 EagleV3 draft on the first turns of N held-out prompts, greedy, float32, fast paths
`auto`; per prompt and method, fused on and off back to back (order alternating), so both see the
same machine. With ARMS=3 (at commit 3c34aba only, which had a one-kernel RMSNorm in the fused scope) a
third arm runs the fused projections without it (`fused.norm` replaced by the module call), between the other two. Methods: base-only, the tree `auto` chose on this host in session 26 (dynamic, depth 2,
top-k 3, 6 nodes) and the fixed depth-5 tree of the bench (top-k 4, 12 nodes). Prints a table and
writes JSON (per-method medians of per-prompt tokens/s ratios, identical outputs).

    .venv/bin/python runs/s27/fused_ab.py [N] [MAX_NEW] [OUT] [ARMS]
"""

from __future__ import annotations

import json
import statistics
import sys

import torch

from specforge_het.algorithms.io import load_draft
from specforge_het.chat import render
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.prompts import load_conversations
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models import fused
from specforge_het.models.base import BaseModel

N = int(sys.argv[1]) if len(sys.argv) > 1 else 8
MAX_NEW = int(sys.argv[2]) if len(sys.argv) > 2 else 96
OUT = sys.argv[3] if len(sys.argv) > 3 else "runs/s27/fused_ab.json"
ARMS = int(sys.argv[4]) if len(sys.argv) > 4 else 2
FAST_NORM = getattr(fused, "norm", None)  # the one-kernel RMSNorm existed only at commit 3c34aba (no gain: reverted)
if ARMS == 3 and FAST_NORM is None:
    sys.exit("ARMS=3 measures the one-kernel RMSNorm of commit 3c34aba: run it there (git checkout 3c34aba)")
TREES = {"base-only": None, "tree d2 k3 n6": TreeSpec("dynamic", 2, 3, 6),
         "tree d5 k4 n12": TreeSpec("dynamic", 5, 4, 12)}

base = BaseModel.load("smollm2-135m-instruct")
draft = load_draft("specforge_het/drafts/smollm2-135m-instruct-eagle3", base).eval()
convs = load_conversations(f"specforge_het/data/files/heldout_prompts.jsonl:{N}")
rows: dict[str, list[dict]] = {name: [] for name in TREES}


def run(spec, ids, on):
    fused.ENABLED = bool(on)
    if FAST_NORM is not None:
        fused.norm = FAST_NORM if on != "proj" else (lambda module, x: module(x))
    proposer = None if spec is None else DraftProposer(draft, spec)
    res = Decoder(base, proposer).generate(ids, MAX_NEW)
    return res.tokens, len(res.tokens) / res.decode_s


for i, conv in enumerate(convs):
    ids = render(base.tokenizer, [{"role": "user", "content": conv.turns[0]}])
    for name, spec in TREES.items():
        run(spec, ids, i % 2 == 0)  # warm-up (kernel choices, caches), not timed
        order = (True, False) if i % 2 == 0 else (False, True)
        if ARMS == 3:
            order = (order[0], "proj", order[1])
        got = {on: run(spec, ids, on) for on in order}
        row = {"prompt": i, "fused_tok_s": got[True][1], "unfused_tok_s": got[False][1],
               "ratio": got[True][1] / got[False][1], "identical": got[True][0] == got[False][0]}
        if ARMS == 3:
            row.update(proj_tok_s=got["proj"][1], proj_ratio=got["proj"][1] / got[False][1],
                       proj_identical=got["proj"][0] == got[False][0])
        rows[name].append(row)
        print(f"{i} {name}: " + " ".join(f"{k} {v[1]:.2f}" for k, v in got.items()) + " tok/s", flush=True)
fused.ENABLED = True
if FAST_NORM is not None:
    fused.norm = FAST_NORM

summary = {name: {"median_ratio": statistics.median(r["ratio"] for r in rs),
                  "fused_tok_s": statistics.median(r["fused_tok_s"] for r in rs),
                  "unfused_tok_s": statistics.median(r["unfused_tok_s"] for r in rs),
                  "identical": f"{sum(r['identical'] for r in rs)}/{len(rs)}",
                  **({"proj_only_median_ratio": statistics.median(r["proj_ratio"] for r in rs),
                      "proj_identical": f"{sum(r['proj_identical'] for r in rs)}/{len(rs)}"} if ARMS == 3 else {})}
           for name, rs in rows.items()}
print(f"{'method':16} {'fused/unfused':>14} {'fused tok/s':>12} {'unfused tok/s':>14} identical")
for name, s in summary.items():
    proj = f"  projections only {s['proj_only_median_ratio']:.3f} ({s['proj_identical']})" if ARMS == 3 else ""
    print(f"{name:16} {s['median_ratio']:14.3f} {s['fused_tok_s']:12.2f} {s['unfused_tok_s']:14.2f} {s['identical']}{proj}")
info = {"command": "python runs/s27/fused_ab.py " + " ".join(sys.argv[1:]), "prompts": N, "max_new_tokens": MAX_NEW,
        "threads": torch.get_num_threads(), "summary": summary, "rows": rows}
with open(OUT, "w") as f:
    json.dump(info, f, indent=1)
print("wrote", OUT)
