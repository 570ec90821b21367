#!/bin/bash
# Session 14, replacing the tail of tv_ab.sh for time: the tv arm collapsed in training (eval top-1 0.038 at
# every unroll step: one token everywhere), so its decoder runs were skipped; the ce+tv arm, then the peers.
cd "$(dirname "$0")/../.."
while [ ! -s runs/tv_ab/ce/sampled_heldout24.jsonl ]; do sleep 10; done
pkill -f runs/s14/tv_ab.sh; sleep 1; pkill -f "draft_path runs/tv_ab/tv "; sleep 3
PY=.venv/bin/python
runs/s14/decode_arm.sh runs/tv_ab/ce_tv || exit 1  # (the same commands were inline when it ran)
[ -f runs/s14/bench_peers_mtbench10.json ] || $PY -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu \
  --modeling.draft_path smollm2-135m-instruct-eagle3 --prompts mtbench:10 --inference.max_new_tokens 128 \
  --methods hf,hf-pld,ours-base,ours-auto,ours-auto-lookup --outfile runs/s14/bench_peers_mtbench10.json \
  > runs/s14/bench_peers_mtbench10.log 2>&1 || exit 1
echo ALL DONE
