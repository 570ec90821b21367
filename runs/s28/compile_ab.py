"""Session 28: `--inference.fast_paths compile` against `auto`, A/B in one process (shipped SmolLM2 draft,
held-out prompts, greedy): base-only, a depth-2 tree, a depth-5 tree; per-prompt tokens/s and identity.
    .venv/bin/python runs/s28/compile_ab.py [N] [MAX_NEW] [OUT_JSON]"""
from __future__ import annotations

import json
import statistics
import sys
import time
import warnings

from specforge_het.algorithms.io import load_draft
from specforge_het.chat import render
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.prompts import load_conversations
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models.base import BaseModel

warnings.filterwarnings("ignore")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 4
MAX_NEW = int(sys.argv[2]) if len(sys.argv) > 2 else 96
OUT = sys.argv[3] if len(sys.argv) > 3 else ""
base = BaseModel.load("smollm2-135m-instruct")
draft = load_draft("specforge_het/drafts/smollm2-135m-instruct-eagle3", base).eval()
prompts = [render(base.tokenizer, [{"role": "user", "content": c.turns[0]}])
           for c in load_conversations(f"specforge_het/data/files/heldout_prompts.jsonl:{N}")]
rows = {}
for label, spec in (("base-only", None), ("d2 k3 n6", TreeSpec("dynamic", 2, 3, 6)), ("d5 k4 n12", TreeSpec("dynamic", 5, 4, 12))):
    decs = {m: Decoder(base, None if spec is None else DraftProposer(draft, spec), fast_paths=m) for m in ("auto", "compile")}
    for m, dec in decs.items():  # warm-up (the first compile of a graph happens here)
        t = time.perf_counter()
        dec.generate(prompts[0], 16)
        dec.generate(prompts[1 % N], 16)
        print(f"{label} {m}: warm-up {time.perf_counter() - t:.1f} s", flush=True)
    speed = {m: [] for m in decs}
    tau = {m: [] for m in decs}
    same = 0
    for ids in prompts:
        out = {}
        for m, dec in decs.items():
            r = dec.generate(ids, MAX_NEW)
            speed[m].append(len(r.tokens) / r.decode_s)
            tau[m].append(r.mean_accept_length)
            out[m] = r.tokens
        same += out["auto"] == out["compile"]
    ratio = statistics.median(c / a for a, c in zip(speed["auto"], speed["compile"]))
    rows[label] = {"auto_tok_s": statistics.median(speed["auto"]), "compile_tok_s": statistics.median(speed["compile"]),
                   "ratio_median": ratio, "tau_auto": statistics.mean(tau["auto"]),
                   "tau_compile": statistics.mean(tau["compile"]), "identical": f"{same}/{N}"}
    print(label, json.dumps(rows[label]), flush=True)
if OUT:
    json.dump({"prompts": N, "max_new_tokens": MAX_NEW, "rows": rows}, open(OUT, "w"), indent=1)
