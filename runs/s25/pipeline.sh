#!/bin/bash
# Session 25: part L (Magpie seed 8, answers <= 256 tokens), stage L (from stage K), its greedy tau (depth-5 tree);
# then part M (seed 9), stage M (from stage L), its tau. Logs in runs/s25/.
cd "$(dirname "$0")/../.."
make data-smollm2-big-l > runs/s25/data_l.log 2>&1 || exit 1
make runs/smollm2_eagle3_warm12/model.safetensors > runs/s25/stage_l.log 2>&1 || exit 1
runs/s17/bench_tau.sh stageL runs/smollm2_eagle3_warm12 mtbench10 heldout24 || exit 1
make data-smollm2-big-m > runs/s25/data_m.log 2>&1 || exit 1
make runs/smollm2_eagle3_warm13/model.safetensors > runs/s25/stage_m.log 2>&1 || exit 1
runs/s17/bench_tau.sh stageM runs/smollm2_eagle3_warm13 mtbench10 heldout24
