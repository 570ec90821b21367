#!/bin/bash
# Session 23: wait for part H's features, then stage H (make runs/smollm2_eagle3_warm8/model.safetensors's recipe).
cd "$(dirname "$0")/../.."
while pgrep -f "add_features runs/data/smollm2_big_h" >/dev/null; do sleep 10; done
make -o features-smollm2-big-h runs/smollm2_eagle3_warm8/model.safetensors
