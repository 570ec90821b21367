"""Session 23: answer tokens by answer position (0-127, 128-255, 256+) in the data each warm-started stage of the
shipped lineage trained on (loss_mask runs of each stored conversation; the 2 % eval splits included), in the
scaling study's order (warm = stage A ... warm8 = stage I, warm9 = J, warm10 = K: session 24 added J, K; session 25 L, M;
stages whose data is missing are left out). python runs/s23/early_tokens.py > runs/s23/early_tokens.json"""
import glob
import json

# G1 and G2 are row ranges of part G (Makefile: merge_datasets --ds_range), read from part G's committed parts, so a
# fresh checkout (without the merged g1/g2 folders) counts them too (session 26).
G1, G2 = "runs/data/smollm2_big_g@5686-6656", "runs/data/smollm2_big_g@6656-7666"
PARTS = {"A (rows 0-767)": "runs/data/smollm2_big@0-768", "B (part B)": "runs/data/smollm2_big_b",
         "C (parts D, E)": "runs/data/smollm2_big_d runs/data/smollm2_big_e", "E (part F)": "runs/data/smollm2_big_f", "F (G1)": G1,
         "G (G2)": G2, "H (part H)": "runs/data/smollm2_big_h",
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
    for one in folder.split():
        f, _, rows = one.partition("@")
        lo, hi = (int(x) for x in rows.split("-")) if rows else (0, 1 << 62)
        for line in (x for path in sorted(glob.glob(f"{f}/parts/*.jsonl")) for x in open(path)):
            row = json.loads(line)
            if not lo <= row["index"] < hi:
                continue
            for p in positions(row["loss_mask"]):
                counts[0 if p < 128 else 1 if p < 256 else 2] += 1
    if sum(counts):
        out[stage] = {"0-127": counts[0], "128-255": counts[1], "256+": counts[2], "all": sum(counts)}
print(json.dumps(out, indent=1))
