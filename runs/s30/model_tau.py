"""Session 30: the cost model's expected τ (inference/cost_model.py) for the trees measured in runs/s30/bench, from the
acceptance `tree auto` measured for the shipped SmolLM2 draft on this host (its cache file in
$SPECFORGE_HET_CACHE/cost_model/), against the τ the bench measured. Acceptance rows past the measured depth /
rank count as the model's floor. Usage: .venv/bin/python runs/s30/model_tau.py CACHE_JSON"""
import json
import sys

from specforge_het.inference.cost_model import Acceptance, TreeShape, expected_tau

data = json.load(open(sys.argv[1]))
acc = Acceptance.from_json(data["acceptance"])
print("acceptance source:", data["acceptance"].get("source"), "| depths", len(acc.probs) if hasattr(acc, "probs") else "?")
for shape in [TreeShape("chain", 1, 1, 2), TreeShape("dynamic", 1, 3, 4), TreeShape("dynamic", 2, 3, 6),
              TreeShape("dynamic", 5, 4, 12), TreeShape("dynamic", 6, 10, 60), TreeShape("dynamic", 7, 10, 60),
              TreeShape("dynamic", 8, 8, 64)]:
    try:
        print(f"{shape.describe():45s} expected τ {expected_tau(acc, shape):.3f}")
    except Exception as e:  # a depth or rank the calibration did not measure
        print(f"{shape.describe():45s} not modelled: {e}")
