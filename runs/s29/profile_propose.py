"""Session 29: torch.profiler over the propose step under `compile` (shipped SmolLM2 draft, d5 k4 n12).
    .venv/bin/python runs/s29/profile_propose.py [N] [MAX_NEW] [FAST_PATHS]
Prints the top ops by self CPU time inside propose, and the wall time of propose per call."""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from specforge_het.algorithms.io import load_draft
from specforge_het.chat import render
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.prompts import load_conversations
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models.base import BaseModel

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2
MAX_NEW = int(sys.argv[2]) if len(sys.argv) > 2 else 64
base = BaseModel.load("smollm2-135m-instruct")
draft = load_draft("specforge_het/drafts/smollm2-135m-instruct-eagle3", base).eval()
convs = load_conversations(f"specforge_het/data/files/heldout_prompts.jsonl:{N}")
proposer = DraftProposer(draft, TreeSpec("dynamic", 5, 4, 12))
dec = Decoder(base, proposer, fast_paths=sys.argv[3] if len(sys.argv) > 3 else "compile")
ids0 = render(base.tokenizer, [{"role": "user", "content": convs[0].turns[0]}])
dec.generate(ids0, MAX_NEW)
dec.generate(ids0, MAX_NEW)
spent = [0.0, 0]
fn = proposer.propose
def w(*a, **k):
    t = time.perf_counter()
    with record_function("PART_propose"):
        out = fn(*a, **k)
    spent[0] += time.perf_counter() - t
    spent[1] += 1
    return out
proposer.propose = w
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    for conv in convs:
        res = dec.generate(render(base.tokenizer, [{"role": "user", "content": conv.turns[0]}]), MAX_NEW)
print(f"propose: {1e3 * spent[0] / spent[1]:.2f} ms per call, {spent[1]} calls (under the profiler)")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
spent[:] = [0.0, 0]
for conv in convs:
    dec.generate(render(base.tokenizer, [{"role": "user", "content": conv.turns[0]}]), MAX_NEW)
print(f"propose without the profiler: {1e3 * spent[0] / spent[1]:.2f} ms per call, {spent[1]} calls")
