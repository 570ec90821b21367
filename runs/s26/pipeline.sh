#!/bin/bash
# Session 26: session 25 was cut off and its untracked runs were lost, so part L is answered again (gen_dataset
# is deterministic: the same rows), stage L trains from the shipped stage-K draft (the stage-K run's weights in
# bfloat16; the run itself was lost with session 25's machine), then part M (Magpie seed 9), stage M (from
# stage L), and the greedy tau of both (depth-5 tree). Logs in runs/s26/.
cd "$(dirname "$0")/../.."
SHIPPED=specforge_het/drafts/smollm2-135m-instruct-eagle3
make data-smollm2-big-l > runs/s26/data_l.log 2>&1 || exit 1
make runs/smollm2_eagle3_warm12/model.safetensors WARM_L_INIT=$SHIPPED > runs/s26/stage_l.log 2>&1 || exit 1
runs/s17/bench_tau.sh stageL runs/smollm2_eagle3_warm12 mtbench10 || exit 1
make data-smollm2-big-m > runs/s26/data_m.log 2>&1 || exit 1
make runs/smollm2_eagle3_warm13/model.safetensors > runs/s26/stage_m.log 2>&1 || exit 1
runs/s17/bench_tau.sh stageM runs/smollm2_eagle3_warm13 mtbench10 heldout24 || exit 1
runs/s17/bench_tau.sh stageL runs/smollm2_eagle3_warm12 heldout24
