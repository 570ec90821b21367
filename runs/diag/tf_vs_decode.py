"""Diagnostic (issue 13): teacher-forced step-0 top-1 of the shipped SmolLM2 draft on the base's own
greedy answers (the `hf` records of a bench JSON on single-turn prompts), against the decoder's chain-1
acceptance (`ours-auto` records) in the same JSON.
Usage: python runs/diag/tf_vs_decode.py runs/bench_ship/warm3_heldout.json heldout [dtype]"""
import json
import sys

import torch

from specforge_het.algorithms.io import load_draft, read_draft_config, resolve_draft_path
from specforge_het.chat import render
from specforge_het.inference.prompts import load_conversations
from specforge_het.models.base import BaseModel

bench = json.load(open(sys.argv[1]))
convs = {c.id: c for c in load_conversations(sys.argv[2])}
dtype = sys.argv[3] if len(sys.argv) > 3 else "float32"
base = BaseModel.load("smollm2-135m-instruct", dtype, "cpu", "sdpa")
name = "smollm2-135m-instruct-eagle3"
draft = load_draft(name, base).eval()
layers = tuple(read_draft_config(resolve_draft_path(name)).feature_layers)
hits = n = base_is_answer = 0
with torch.no_grad():
    for r in bench["records"]:
        if r["method"] != "hf" or str(r["turn"]) != "0":
            continue
        prompt = render(base.tokenizer, [{"role": "user", "content": convs[r["conversation"]].turns[0]}])
        ans = torch.tensor([r["token_ids"]])
        ids = torch.cat([prompt, ans], 1)
        p, s = prompt.shape[1], ids.shape[1]
        out = base.features(ids, layers)
        hidden = draft.input_from_base(ids[:, 1:], out.features[:, :-1])
        pos = torch.arange(s - 1)[None]
        h = draft(ids[:, 1:], hidden, pos)
        guess = draft.to_base_ids(draft.logits(h).argmax(-1))  # position i predicts token i+2
        want = out.logits.argmax(-1)  # position i+1 predicts token i+2
        lo, hi = p - 1, s - 2  # i such that token i+1 is an answer token and i+2 exists
        g, w = guess[0, lo:hi], want[0, lo + 1: hi + 1]
        hits += int((g == w).sum()); n += g.numel()
        base_is_answer += int((want[0, p - 1: s - 1] == ans[0]).sum())
dec = [r for r in bench["records"] if r["method"] == "ours-auto"]
hist = {}
for r in dec:
    for k, v in (r["accept_length_histogram"] or {}).items():
        hist[k] = hist.get(k, 0) + v
steps = sum(hist.values())
print(f"teacher-forced step-0 top-1: {hits}/{n} = {hits / max(n, 1):.3f} ({dtype} base); "
      f"base argmax reproduces the stored answer at {base_is_answer} positions")
print(f"decoder (ours-auto) accept-length histogram {hist}: accepted draft tokens per step "
      f"{(sum(int(k) * v for k, v in hist.items()) / max(steps, 1)) - 1:.3f}")
