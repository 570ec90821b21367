"""Session 16: tau per draft, prompt set and turn, from runs/s16/bench/<draft>_<set>.json (bench_multiturn.sh).

    python runs/s16/summarize.py [DRAFT ...]   (default: shipped mt)
Writes runs/s16/summary.json and prints a table. tau of a set = committed tokens / verify steps over all its turns."""
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
SETS = ("mtbench10", "other10", "heldout24")


def tau(recs):
    return round(sum(r["committed"] for r in recs) / sum(r["steps"] for r in recs), 3) if recs else None


def main(drafts):
    out = {}
    for d in drafts:
        for s in SETS:
            f = HERE / "bench" / f"{d}_{s}.json"
            if not f.is_file():
                continue
            recs = [r for r in json.loads(f.read_text())["records"] if r["method"] == "ours-tree"]
            turns = sorted({r["turn"] for r in recs})
            out[f"{d}/{s}"] = {"tau": tau(recs), **{f"turn{t + 1}": tau([r for r in recs if r["turn"] == t]) for t in turns},
                              "identical": sum(bool(r.get("identical")) for r in recs), "turns": len(recs)}
    (HERE / "summary.json").write_text(json.dumps(out, indent=1))
    print(f"{'draft/set':24} {'tau':>6} {'turn 1':>7} {'turn 2':>7} identical")
    for k, v in out.items():
        print(f"{k:24} {v['tau']:>6} {v.get('turn1') or '':>7} {v.get('turn2') or '':>7} {v['identical']}/{v['turns']}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["shipped", "mt"])
