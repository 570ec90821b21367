"""Session 26: the scaling points' tokens.json for the drafts whose folders this checkout lacks.

Session 25's machine was lost with its untracked run folders, and runs/smollm2_eagle3_warm4..warm11 (the logs that
`python -m specforge_het.bench.scaling` counts tokens from) were never committed, so `make scaling-smollm2-warm`
could not count those points on a fresh checkout. The counts themselves are in docs/results/scaling_smollm2.json,
written by that command (session 24) while the folders were there; this copies each into its point's tokens.json,
the file the command now writes (and reads for a folder that is gone), with the chain of drafts summed: each
warm-started point was trained from the point before it (stage E from C, linked in the Makefile, skips stage D,
not a point). Usage: python runs/s26/seed_tokens.py
"""

import json
from pathlib import Path

from specforge_het.bench.scaling import _LOGS

done = json.loads(Path("docs/results/scaling_smollm2.json").read_text())
chains: dict[str, list[str]] = {}  # series -> the drafts so far: each stage was trained from the point before it
for p in sorted(done["points"], key=lambda p: (p["series"], p["answer_tokens"])):
    folder = Path("runs/scaling") / p["series"] / p["name"]
    draft = json.loads((folder / "bench.json").read_text()).get("header", {}).get("draft", "")
    chain = chains[p["series"]] = [draft, *chains.get(p["series"], [])]
    if not draft or (folder / "train.log").is_file() or any((Path(draft) / n).is_file() for n in _LOGS):
        continue  # counted afresh from what the checkout has
    linked = [d for d in chain if d == "runs/smollm2_eagle3_warm5"]  # stage E: --trained_from $(WARM_E)=$(WARM_C)
    kept = {"draft": draft, "answer_tokens": p["answer_tokens"], "seq_tokens": p["seq_tokens"], "chain": chain,
            "linked": linked}
    (folder / "tokens.json").write_text(json.dumps(kept, indent=1) + "\n")
    print(folder, kept)
