#!/bin/bash
# Session 23: after part I's answers (make data-smollm2-big-i, logged in runs/s23/data_i.log), its features, stage I,
# then its greedy tau (depth-5 tree) on both prompt sets.
cd "$(dirname "$0")/../.."
while pgrep -f "make data-smollm2-big-i" >/dev/null; do sleep 15; done
tail -1 runs/s23/data_i.log | grep -q "^runs/data/smollm2_big_i$" || { echo "part I did not finish"; exit 1; }
make runs/smollm2_eagle3_warm9/model.safetensors || exit 1
runs/s17/bench_tau.sh stageI runs/smollm2_eagle3_warm9 mtbench10 heldout24
