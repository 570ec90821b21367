"""Session 29: summarise a py-spy raw (collapsed) file: inclusive share of samples under `timed` per function
(file:function), top N.    .venv/bin/python runs/s29/spy_summary.py runs/s29/spy_step.txt [N]"""
import collections
import re
import sys

incl, total = collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    frames = stack.split(";")
    if not any(f.startswith("timed ") for f in frames):
        continue
    n = int(n)
    total += n
    seen = set()
    for f in frames:
        key = re.sub(r" \((.*?):\d+\)$", lambda m: " (" + m.group(1).split("site-packages/")[-1].split("/work/main/")[-1] + ")", f)
        if key not in seen:
            seen.add(key)
            incl[key] += n
for key, n in incl.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 60):
    print(f"{100 * n / total:5.1f} %  {key}")
