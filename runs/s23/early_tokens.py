"""Session 23: answer tokens by answer position (0-127, 128-255, 256+) in the parts each warm-started stage trained
on (loss_mask runs of each stored conversation). python runs/s23/early_tokens.py > runs/s23/early_tokens.json"""
import glob
import json

PARTS = {"E (part F)": "runs/data/smollm2_big_f", "F (G1)": "runs/data/smollm2_big_g1",
         "G (G2)": "runs/data/smollm2_big_g2", "H (part H)": "runs/data/smollm2_big_h",
         "I (part I)": "runs/data/smollm2_big_i"}


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
    for path in sorted(glob.glob(f"{folder}/parts/*.jsonl")):
        for line in open(path):
            for p in positions(json.loads(line)["loss_mask"]):
                counts[0 if p < 128 else 1 if p < 256 else 2] += 1
    if sum(counts):
        out[stage] = {"0-127": counts[0], "128-255": counts[1], "256+": counts[2], "all": sum(counts)}
print(json.dumps(out, indent=1))
