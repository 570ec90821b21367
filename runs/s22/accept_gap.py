"""Session 22: where does the shipped draft's acceptance fall? Depth-1 top-1 (and top-4) of the draft fed the true
path (calibrate.truth_ranks), by answer position, on (a) the 24 held-out prompts (greedy base answers, 256 tokens)
and (b) 24 rows of its own training data (G2, answers as stored), with the base's features in float32 (as the
decoder runs) and, for (a), in bfloat16 (as the training features were made).
Usage: python runs/s22/accept_gap.py [DRAFT] > runs/s22/accept_gap.json"""
import json
import sys

import torch
from datasets import load_from_disk

from specforge_het.algorithms.io import load_draft
from specforge_het.config import InferenceConfig
from specforge_het.inference import calibrate
from specforge_het.inference.prompts import load_conversations
from specforge_het.models.base import BaseModel

DRAFT = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct-eagle3"
BUCKETS = ((0, 48), (48, 128), (128, 256), (256, 4096))


def summary(answers, base, draft):
    by = {b: [] for b in BUCKETS}
    for prompt, answer in answers:
        ranks, valid = calibrate.truth_ranks(base, draft, torch.tensor([prompt]), answer, depth=1)
        for j in range(ranks.shape[0]):
            if valid[j, 0]:
                b = next(b for b in BUCKETS if b[0] <= j < b[1])
                by[b].append(int(ranks[j, 0]))
    out = {}
    for (lo, hi), r in by.items():
        if r:
            t = torch.tensor(r)
            out[f"{lo}-{hi}"] = {"n": len(r), "top1": round(float((t == 0).float().mean()), 3),
                                 "top4": round(float((t < 4).float().mean()), 3)}
    return out


torch.manual_seed(0)
res = {"draft": DRAFT}
inf = InferenceConfig()
for dtype in ("float32", "bfloat16"):
    base = BaseModel.load("smollm2-135m-instruct", dtype=dtype)
    draft = load_draft(DRAFT, base).to(base.dtype).eval()
    if dtype == "float32":
        prompts = [c.turns[0] for c in load_conversations("specforge_het/data/files/heldout_prompts.jsonl")]
        held = calibrate.base_answers(base, prompts, inf, answer_tokens=256)
        rows = load_from_disk("runs/data/smollm2_big_g2/dataset").shuffle(seed=0).select(range(24))
        own = []
        for r in rows:
            first = r["loss_mask"].index(1)  # the first answer token
            own.append((r["input_ids"][:first], r["input_ids"][first:]))
        res["g2_rows_float32"] = summary(own, base, draft)
    res[f"heldout_{dtype}"] = summary(held, base, draft)
    print(json.dumps(res, indent=1), file=sys.stderr)
print(json.dumps(res, indent=1))
