"""Session 23: the shipped lineage's MT-Bench τ (runs/scaling/smollm2_warm_started/*/bench.json) against cumulative
answer tokens in positions 0-255 (runs/s23/early_tokens.json), fitted as τ = a + b·ln(tokens), with the fit over
all answer tokens beside it. python runs/s23/early_fit.py > runs/s23/early_fit.json (session 23: stages A-I);
python runs/s23/early_fit.py K > runs/s24/early_fit.json (session 24: through stage K; J, K need their points);
python runs/s23/early_fit.py L > runs/s26/early_fit.json (session 26: through stage L; M when its point exists)."""
import json
import sys
from specforge_het.bench.scaling import log_fit

STAGES = ["A (rows 0-767)", "B (part B)", "C (parts D, E)", "E (part F)", "F (G1)", "G (G2)", "H (part H)", "I (part I)",
          "J (part J)", "K (part K)", "L (part L)", "M (part M)"]
POINTS = ["warm", "warm2", "warm3", "warm4", "warm5", "warm6", "warm7", "warm8", "warm9", "warm10", "warm11", "warm12"]
last = 1 + next(i for i, s in enumerate(STAGES) if s.startswith(sys.argv[1] if len(sys.argv) > 1 else "I"))
STAGES, POINTS = STAGES[:last], POINTS[:last]
counts = json.load(open("runs/s23/early_tokens.json"))
taus = [json.load(open(f"runs/scaling/smollm2_warm_started/{p}/bench.json"))["summary"]["ours-tree"]["tau"]
        for p in POINTS]
out = {}
for name, keys in (("positions 0-255", ("0-127", "128-255")), ("all positions", ("0-127", "128-255", "256+"))):
    cum, xs = 0, []
    for s in STAGES:
        cum += sum(counts[s][k] for k in keys)
        xs.append(cum)
    fit = log_fit([{"answer_tokens": x, "tau": t} for x, t in zip(xs, taus)], (2.2, 2.5))
    out[name] = {"tokens": xs, "tau": [round(t, 3) for t in taus], **fit}
print(json.dumps(out, indent=1))
