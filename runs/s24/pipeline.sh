#!/bin/bash
# Session 24: after part J's answers (make data-smollm2-big-j, runs/s24/data_j.log): stage J (features + training)
# and its greedy tau (depth-5 tree); then part K (Magpie seed 7 prompts, answers <= 256 tokens), stage K, its tau.
cd "$(dirname "$0")/../.."
while pgrep -f "make data-smollm2-big-j" >/dev/null; do sleep 15; done
tail -1 runs/s24/data_j.log | grep -q "^runs/data/smollm2_big_j$" || { echo "part J did not finish"; exit 1; }
make runs/smollm2_eagle3_warm10/model.safetensors > runs/s24/stage_j.log 2>&1 || exit 1
runs/s17/bench_tau.sh stageJ runs/smollm2_eagle3_warm10 mtbench10 heldout24 || exit 1
make data-smollm2-big-k > runs/s24/data_k.log 2>&1 || exit 1
make runs/smollm2_eagle3_warm11/model.safetensors > runs/s24/stage_k.log 2>&1 || exit 1
runs/s17/bench_tau.sh stageK runs/smollm2_eagle3_warm11 mtbench10 heldout24
