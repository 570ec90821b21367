"""Session 17: widen the shipped SmolLM2 draft's vocabulary with no training at all, and see what tau does.

python runs/s17/widen_zero.py OUT ROWS INIT
The new rows are the answer tokens of all breadth data (runs/data/smollm2_big*/parts, loss-masked; the _768 copy
skipped) the shipped draft cannot propose, most frequent first, up to ROWS rows in all. INIT: map (the base's
head row through the least-squares map fitted on the 8192 ids both hold) or base (the base's head row as is).
Every other weight is the shipped draft's, so its old rows' logits are unchanged."""

import glob
import json
import sys

import torch

from specforge_het.algorithms.build import widen_vocab
from specforge_het.algorithms.io import load_draft, save_draft
from specforge_het.config import resolve
from specforge_het.models.base import BaseModel

out, rows, init = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg, _, _ = resolve(["--@smollm2", "--@eagle_v3"])
base = BaseModel.from_config(cfg.modeling)
draft = load_draft("smollm2-135m-instruct-eagle3", base).float()
counts = torch.zeros(base.vocab_size, dtype=torch.long)
for f in sorted(glob.glob("runs/data/smollm2_big*/parts/part-*.jsonl")):
    if "_768" in f:
        continue
    for line in open(f):
        r = json.loads(line)
        ids = torch.tensor(r["input_ids"])[torch.tensor(r["loss_mask"]).bool()]
        counts += torch.bincount(ids, minlength=base.vocab_size)
wide = widen_vocab(draft, base, counts, rows, init)
share = lambda d: float(counts[d.vocab.d2t.cpu()].sum() / counts.sum())  # noqa: E731
print(f"{init}: {draft.cfg.draft_vocab_size} -> {wide.cfg.draft_vocab_size} rows; the data's answer tokens covered "
      f"{share(draft):.1%} -> {share(wide):.1%}")
save_draft(wide, out, {"session17": f"shipped draft widened to {rows} rows ({init}), no training"})
