"""Session 27: where a speculative step's time goes on this host (shipped SmolLM2 draft, greedy, fast paths auto).

Wraps the decoder's parts with wall-clock timers: the proposer's propose / update, the base forward
(prefill excluded) and the verification walk (LM head rows included); prints ms per step for each.
    .venv/bin/python runs/s27/step_parts.py [N] [MAX_NEW]
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

from specforge_het.algorithms.io import load_draft
from specforge_het.chat import render
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.prompts import load_conversations
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models.base import BaseModel

N = int(sys.argv[1]) if len(sys.argv) > 1 else 4
MAX_NEW = int(sys.argv[2]) if len(sys.argv) > 2 else 96
spent: dict[str, float] = defaultdict(float)


def timed(obj, name: str, label: str) -> None:
    fn = getattr(obj, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        out = fn(*a, **k)
        spent[label] += time.perf_counter() - t
        return out
    setattr(obj, name, wrapper)


base = BaseModel.load("smollm2-135m-instruct")
draft = load_draft("specforge_het/drafts/smollm2-135m-instruct-eagle3", base).eval()
convs = load_conversations(f"specforge_het/data/files/heldout_prompts.jsonl:{N}")
for spec in (None, TreeSpec("dynamic", 2, 3, 6), TreeSpec("dynamic", 5, 4, 12)):
    proposer = None if spec is None else DraftProposer(draft, spec)
    dec = Decoder(base, proposer)
    dec.generate(render(base.tokenizer, [{"role": "user", "content": convs[0].turns[0]}]), 8)  # warm-up
    spent.clear()
    timed(base, "forward", "base forward")
    timed(dec.verifier, "greedy", "verify walk (head rows)")
    if proposer is not None:
        timed(proposer, "propose", "draft propose")
        timed(proposer, "update", "draft update")
    steps, decode = 0, 0.0
    for conv in convs:
        ids = render(base.tokenizer, [{"role": "user", "content": conv.turns[0]}])
        res = dec.generate(ids, MAX_NEW)
        steps += len(res.accept_lengths)
        decode += res.decode_s
        spent["base forward"] -= res.prefill_s  # the prefill is not a step (approximately: it includes the draft start)
    del base.forward
    name = "base-only" if spec is None else f"d{spec.max_depth} k{spec.top_k} n{spec.total_tokens}"
    parts = ", ".join(f"{k} {1e3 * v / steps:.1f}" for k, v in spent.items())
    print(f"{name}: {1e3 * decode / steps:.1f} ms/step over {steps} steps; {parts}; rest "
          f"{1e3 * (decode - sum(spent.values())) / steps:.1f}", flush=True)
