"""Diagnostic (issue 13): share of a dataset's answer tokens that a foreign-vocabulary draft can propose
(its head rows' base ids), against the best N rows the data itself would pick.
Usage: python runs/diag/gemma_vocab_coverage.py DRAFT_FOLDER DATASET_FOLDER [N]
e.g.   python runs/diag/gemma_vocab_coverage.py specforge_het/drafts/gemma3-270m-smollm2-het runs/data/gemma_big 8192"""
import glob
import json
import sys
from collections import Counter

from safetensors.torch import load_file

draft, data = sys.argv[1], sys.argv[2]
rows = int(sys.argv[3]) if len(sys.argv) > 3 else 8192
proposable = set(load_file(f"{draft}/model.safetensors")["vocab.d2t"].tolist())
counts: Counter = Counter()
for f in sorted(glob.glob(f"{data}/parts/*.jsonl")):
    for line in open(f):
        r = json.loads(line)
        counts.update(t for t, m in zip(r["input_ids"], r["loss_mask"]) if m)
n = sum(counts.values())
have = sum(c for t, c in counts.items() if t in proposable)
best = sum(c for _, c in counts.most_common(rows))
print(f"{n} answer tokens, {len(counts)} distinct; the draft's {len(proposable)} rows cover {have / n:.4f}; "
      f"the {rows} most frequent base ids would cover {best / n:.4f}")
