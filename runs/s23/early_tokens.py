"""Session 23: answer tokens by answer position (0-127, 128-255, 256+) in the data each warm-started stage of the
shipped lineage trained on (loss_mask runs of each stored conversation; the 2 % eval splits included), in the
scaling study's order (warm = stage A ... warm8 = stage I, warm9 = J, warm10 = K: session 24 added J, K; session 25 L, M;
stages whose data is missing are left out). python runs/s23/early_tokens.py > runs/s23/early_tokens.json"""
import glob
import json

PARTS = {"A (rows 0-767)": "runs/data/smollm2_big", "B (part B)": "runs/data/smollm2_big_b",
         "C (parts D, E)": "runs/data/smollm2_big_d runs/data/smollm2_big_e", "E (part F)": "runs/data/smollm2_big_f", "F (G1)": "runs/data/smollm2_big_g1",
         "G (G2)": "runs/data/smollm2_big_g2", "H (part H)": "runs/data/smollm2_big_h",
         "I (part I)": "runs/data/smollm2_big_i", "J (part J)": "runs/data/smollm2_big_j",
         "K (part K)": "runs/data/smollm2_big_k", "L (part L)": "runs/data/smollm2_big_l",
         "M (part M)": "runs/data/smollm2_big_m"}


def positions(mask):
    """Position of each answer token within its answer (a run of 1s in loss_mask)."""
    run = 0
    for m in mask:
        run = run + 1 if m else 0
        if m:
            yield run - 1


out = {}
for stage, folder in PARTS.items():
    counts = [0, 0, 0]
    paths = [p for f in folder.split() for p in sorted(glob.glob(f"{f}/parts/*.jsonl"))]
    for path in paths:
        for line in open(path):
            row = json.loads(line)
            if stage.startswith("A") and row["index"] >= 768:
                continue
            for p in positions(row["loss_mask"]):
                counts[0 if p < 128 else 1 if p < 256 else 2] += 1
    if sum(counts):
        out[stage] = {"0-127": counts[0], "128-255": counts[1], "256+": counts[2], "all": sum(counts)}
print(json.dumps(out, indent=1))
