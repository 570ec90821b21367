"""How much of the base's greedy output can the SmolLM2 draft propose at all? (session 15)

python runs/s15/vocab_coverage.py
Coverage of the base's own greedy answer tokens (the bench's `hf` / base-only records) by (a) the shipped
draft's 8192 rows (its d2t, kept from the 874-conversation draft it was warm-started from) and (b) the K most
frequent answer tokens of the breadth training data (runs/data/smollm2_big*/parts, loss-masked tokens only),
K = 8192, 16384, 32768. A token outside the draft's rows is a certain miss at every depth."""

import collections
import glob
import json

import torch
from safetensors.torch import load_file

d2t = set(load_file("specforge_het/drafts/smollm2-135m-instruct-eagle3/model.safetensors")["vocab.d2t"].tolist())
freq: collections.Counter = collections.Counter()
PARTS = [f for f in sorted(glob.glob("runs/data/smollm2_big*/parts/part-*.jsonl")) if "_768" not in f]  # _768: a copy
for f in PARTS:
    for line in open(f):
        r = json.loads(line)
        ids, mask = r["input_ids"], r.get("loss_mask") or r.get("labels_mask")
        freq.update(t for t, m in zip(ids, mask) if m)
ranked = [t for t, _ in freq.most_common()]
print(f"training answer tokens: {sum(freq.values()):,}, distinct {len(freq):,}")
first768: set = set()
for f in sorted(glob.glob("runs/data/smollm2_big/parts/part-*.jsonl")):  # the widen A/B's training data
    for line in open(f):
        r = json.loads(line)
        first768.update(t for t, m in zip(r["input_ids"], r["loss_mask"]) if m)
widened = d2t | first768
print(f"first 768 conversations: {len(first768):,} distinct answer tokens; shipped rows + them: {len(widened):,}")
evals = {"MT-Bench 10x2 (runs/s14/bench_peers_mtbench10.json)": ("runs/s14/bench_peers_mtbench10.json", "hf"),
         "24 held-out (runs/bench_warm/warm3_heldout.json)": ("runs/bench_warm/warm3_heldout.json", None)}
out = {}
for name, (path, method) in evals.items():
    recs = json.load(open(path))["records"]
    method = method or recs[0]["method"]
    toks = [t for r in recs if r["method"] == method for t in r["token_ids"]]
    row = {"tokens": len(toks), "shipped_8192": sum(t in d2t for t in toks) / len(toks),
           "widened_with_first_768": sum(t in widened for t in toks) / len(toks)}
    for k in (8192, 16384, 32768):
        top = set(ranked[:k])
        row[f"breadth_top_{k}"] = sum(t in top for t in toks) / len(toks)
    out[name] = row
    print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
w = load_file("specforge_het/drafts/smollm2-135m-instruct-eagle3/model.safetensors")
base_head = load_file(str(__import__("pathlib").Path.home() / ".cache/specforge_het/smollm2-135m-instruct/model.safetensors"))
base_head = next(v for k, v in base_head.items() if "embed_tokens" in k or "lm_head" in k).float()
rows, ids = w["lm_head.weight"].float(), w["vocab.d2t"].long()
cos = torch.nn.functional.cosine_similarity(rows, base_head[ids], dim=1).mean().item()
print(f"shipped head rows vs the base's rows of the same ids: cosine {cos:.3f}, norms {rows.norm(dim=1).mean():.3f} "
      f"vs {base_head[ids].norm(dim=1).mean():.3f}")
print(json.dumps(out))
