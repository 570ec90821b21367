"""Session 14: the loss comparison (ce / tv / ce+tv) from runs/tv_ab/*: eval metrics from each run's
training_log.json, greedy τ from its bench JSONs, sampled τ (temperature 1) from its inference JSONL.
Prints a markdown table and writes docs/results/loss_tv_ab_smollm2.json.
Usage: python runs/s14/summarize_ab.py"""
import json
from pathlib import Path

ROOT = Path("runs/tv_ab")
rows = {}
for arm in ("ce", "tv", "ce_tv"):
    d = ROOT / arm
    log = json.loads((d / "training_log.json").read_text())
    ev = [r for r in log if "eval_top1_acc_0" in r][-1]
    done = [r for r in log if "train_runtime" in r][-1]
    row = {"loss": arm.replace("_", "+"), "steps": done["step"], "train_s": done["train_runtime"],
           "eval_top1": [ev[f"eval_top1_acc_{j}"] for j in range(7)],
           "eval_sim_tau": ev["eval_sim_accept_length"], "eval_tokens": ev["eval_tokens"]}
    for name in ("mtbench10", "heldout24"):  # the collapsed tv arm was not decoded (None)
        f = d / f"bench_{name}.json"
        s = json.loads(f.read_text())["summary"]["ours-tree"] if f.exists() else {}
        row[f"greedy_tau_{name}"] = s.get("tau")
        row[f"greedy_new_tokens_{name}"] = s.get("new_tokens")
    f = d / "sampled_heldout24.jsonl"
    s = json.loads(f.read_text().splitlines()[-1])["summary"]["speculative"] if f.exists() else {}
    row["sampled_tau_heldout24"] = s.get("tau")
    row["sampled_new_tokens_heldout24"] = s.get("new_tokens")
    rows[arm] = row

print("| loss | eval top-1, unroll steps 0 / 1 / 2 | eval sim τ | τ greedy, MT-Bench 10×2 | τ greedy, held-out 24 | τ sampled (T=1), held-out 24 |")
print("|---|---|---|---|---|---|")
for r in rows.values():
    t = " / ".join(f"{a:.3f}" for a in r["eval_top1"][:3])
    g = [r[k] for k in ("greedy_tau_mtbench10", "greedy_tau_heldout24", "sampled_tau_heldout24")]
    print(f"| {r['loss']} | {t} | {r['eval_sim_tau']:.3f} | " + " | ".join("not run" if v is None else f"{v:.2f}" for v in g) + " |")
out = {"command": "STEPS=160 runs/s14/tv_ab.sh (training, and the ce arm decoded), runs/s14/tv_ab_rest.sh (the ce+tv arm decoded), then python runs/s14/summarize_ab.py", "arms": rows}
Path("docs/results/loss_tv_ab_smollm2.json").write_text(json.dumps(out, indent=1) + "\n")
print("wrote docs/results/loss_tv_ab_smollm2.json")
