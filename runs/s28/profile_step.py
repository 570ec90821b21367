"""Session 28: torch.profiler over speculative steps (shipped SmolLM2 draft, d2 k3 n6, fast paths auto).
    .venv/bin/python runs/s28/profile_step.py [N] [MAX_NEW] [FAST_PATHS]
Prints the top ops by self CPU time inside the draft update, the propose and the base forward."""
import sys
import torch
from torch.profiler import profile, record_function, ProfilerActivity
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
proposer = DraftProposer(draft, TreeSpec("dynamic", 2, 3, 6))
dec = Decoder(base, proposer, fast_paths=sys.argv[3] if len(sys.argv) > 3 else "auto")
ids0 = render(base.tokenizer, [{"role": "user", "content": convs[0].turns[0]}])
dec.generate(ids0, MAX_NEW)
dec.generate(ids0, MAX_NEW)
for obj, name in ((proposer, "update"), (proposer, "start"), (proposer, "propose"), (dec.verifier, "greedy"), (base, "forward")):
    fn = getattr(obj, name)
    def w(*a, _fn=fn, _n=name, **k):
        with record_function("PART_" + _n):
            return _fn(*a, **k)
    setattr(obj, name, w)
with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
    for conv in convs:
        res = dec.generate(render(base.tokenizer, [{"role": "user", "content": conv.turns[0]}]), MAX_NEW)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
