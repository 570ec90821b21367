"""Session 17: greedy tau per bench file (runs/s17/bench/*.json) next to the shipped draft's on the same prompts
(runs/s16/bench/shipped_*.json). python runs/s17/summarize.py"""

import glob
import json
import os


def tau(path: str) -> tuple[float, int, int]:
    s = json.load(open(path))["summary"]["ours-tree"]
    return s["tau"], s["identical"], s["compared"]

out = {}
for f in sorted(glob.glob("runs/s17/bench/*.json")):
    name, s = os.path.basename(f)[:-5].rsplit("_", 1)
    ref = f"runs/s16/bench/shipped_{s}.json"
    t, same, n = tau(f)
    t0 = tau(ref)[0] if os.path.exists(ref) else float("nan")
    out[f"{name}_{s}"] = {"tau": round(t, 3), "shipped_tau": round(t0, 3), "identical": f"{same}/{n}"}
    print(f"{name:12s} {s:10s} tau {t:.3f}  (shipped {t0:.3f}, {t - t0:+.3f})  identical {same}/{n}")
json.dump(out, open("runs/s17/summary.json", "w"), indent=1)
