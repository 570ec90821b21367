"""Session 26: is stage L's tau different from stage K's? Paired by prompt (both benches decode the same greedy
base outputs), the mean per-prompt tau difference with a 95 % bootstrap interval (10,000 resamples, seed 0).
Usage: python runs/s26/paired.py A B  (bench JSON names under runs/s17/bench without _SET.json, e.g. stageK stageL)"""
import json
import random
import sys


def taus(name: str, prompts: str) -> dict:
    d = json.load(open(f"runs/s17/bench/{name}_{prompts}.json"))
    return {(r["conversation"], r["turn"]): r["committed"] / r["steps"] for r in d["records"] if r["method"] == "ours-tree"}


out = {}
for prompts in ("mtbench10", "heldout24"):
    a, b = taus(sys.argv[1], prompts), taus(sys.argv[2], prompts)
    diffs = [b[k] - a[k] for k in a]
    rng = random.Random(0)
    boot = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(10_000))
    out[prompts] = {"prompts": len(diffs), "mean_diff": round(sum(diffs) / len(diffs), 4),
                    "ci95": [round(boot[249], 4), round(boot[9749], 4)]}
print(json.dumps(out, indent=1))
