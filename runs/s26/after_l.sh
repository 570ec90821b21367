#!/bin/bash
# Session 26: this host (AMD EPYC without AVX512, so float32 throughout) generated part L at 209 tok/s, not the
# ~350 of the earlier bf16 hosts, so part M does not fit this session: pipeline.sh was stopped after starting stage
# L; this waits for stage L (make, started by pipeline.sh) and measures its greedy tau on both prompt sets.
cd "$(dirname "$0")/../.."
while pgrep -f "make runs/smollm2_eagle3_warm12/model.safetensors" > /dev/null; do sleep 20; done
[ -f runs/smollm2_eagle3_warm12/model.safetensors ] || { echo "stage L did not finish"; exit 1; }
runs/s17/bench_tau.sh stageL runs/smollm2_eagle3_warm12 mtbench10 heldout24
