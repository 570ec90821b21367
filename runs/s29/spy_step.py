"""Session 29: decode held-out prompts under `compile` with one tree, for py-spy (Python stacks of a step).
    .venv/bin/py-spy record -r 200 -f raw -o runs/s29/spy_step.txt -- .venv/bin/python runs/s29/spy_step.py N MAX_NEW DEPTH TOPK TOKENS
The first generation (compiles, warm-up) is excluded by the marker function `timed` in the stacks."""
import sys
import time

from specforge_het.algorithms.io import load_draft
from specforge_het.chat import render
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.prompts import load_conversations
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models.base import BaseModel

N, MAX_NEW, DEPTH, TOPK, TOKENS = (int(a) for a in sys.argv[1:6])
base = BaseModel.load("smollm2-135m-instruct")
draft = load_draft("specforge_het/drafts/smollm2-135m-instruct-eagle3", base).eval()
convs = load_conversations(f"specforge_het/data/files/heldout_prompts.jsonl:{N}")
dec = Decoder(base, DraftProposer(draft, TreeSpec("dynamic", DEPTH, TOPK, TOKENS)), fast_paths="compile")
prompts = [render(base.tokenizer, [{"role": "user", "content": c.turns[0]}]) for c in convs]
dec.generate(prompts[0], 32)


def timed():
    steps, t, toks = 0, 0.0, 0
    for ids in prompts:
        res = dec.generate(ids, MAX_NEW)
        steps, t, toks = steps + res.steps, t + res.decode_s, toks + len(res.tokens) - 1
    print(f"d{DEPTH} k{TOPK} n{TOKENS}: {1e3 * t / steps:.1f} ms/step, tau {toks / steps:.2f}, {toks / t:.1f} tok/s")


t0 = time.perf_counter()
timed()
print(f"{time.perf_counter() - t0:.0f} s")
