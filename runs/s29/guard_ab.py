"""Session 29: `compile` with and without the guard skip (models/compiled.py SKIP_GUARDS), interleaved per prompt in one
process: base-only and the given trees, shipped SmolLM2 draft, held-out prompts. Prints tok/s per arm, the median
per-prompt ratio, and whether the tokens agree; writes JSON.
    .venv/bin/python runs/s29/guard_ab.py N MAX_NEW OUT.json"""
import json
import statistics
import sys

from specforge_het.algorithms.io import load_draft
from specforge_het.chat import render
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.prompts import load_conversations
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models import compiled
from specforge_het.models.base import BaseModel

N, MAX_NEW, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
base = BaseModel.load("smollm2-135m-instruct")
draft = load_draft("specforge_het/drafts/smollm2-135m-instruct-eagle3", base).eval()
convs = load_conversations(f"specforge_het/data/files/heldout_prompts.jsonl:{N}")
prompts = [render(base.tokenizer, [{"role": "user", "content": c.turns[0]}]) for c in convs]
results = {}
for spec in (None, TreeSpec("dynamic", 1, 3, 4), TreeSpec("dynamic", 5, 4, 12)):
    name = "base-only" if spec is None else f"d{spec.max_depth} k{spec.top_k} n{spec.total_tokens}"
    dec = Decoder(base, None if spec is None else DraftProposer(draft, spec), fast_paths="compile")
    dec.generate(prompts[0], 16)  # compiles (once per process) and warms
    rows = {"full guards": [], "skip guards": []}
    same = True
    for ids in prompts:
        toks = {}
        for arm, skip in (("full guards", False), ("skip guards", True)):
            compiled.SKIP_GUARDS = skip
            res = dec.generate(ids, MAX_NEW)
            rows[arm].append((len(res.tokens) - 1) / res.decode_s)
            toks[arm] = res.tokens
        same &= toks["full guards"] == toks["skip guards"]
    ratio = statistics.median(b / a for a, b in zip(rows["full guards"], rows["skip guards"]))
    results[name] = {arm: statistics.median(v) for arm, v in rows.items()} | {"median_ratio": ratio, "identical": same}
    print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in results[name].items()}, flush=True)
json.dump(results, open(OUT, "w"), indent=1)
