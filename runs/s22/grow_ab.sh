#!/bin/bash
# Session 22: does a deeper draft pay? A/B on the same data, steps and learning rate:
#   grow:    the shipped stage-G run (runs/smollm2_eagle3_warm7) + 1 decoder layer (--modeling.grow_layers 1:
#            the base's last layer, output projections at zero, so it starts as the 1-layer draft);
#   control: the same run, 1 layer.
# Both: one more epoch over G2 (the data stage G trained on; the eval split is held out in both runs), 7 unroll
# steps, lr 6e-4, offline. Then greedy tau with the depth-5 tree (runs/s17/bench_tau.sh) on MT-Bench 81-90 and the
# 24 held-out prompts. Each step resumes.
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
train() {  # OUT EXTRA...
  local out=$1; shift
  [ -f $out/model.safetensors ] && return 0
  $PY -m specforge_het.train --@smollm2 --@eagle_v3 --training.mode offline --training.ttt_steps 7 \
    --training.per_device_batch_size 2 --training.warmup_ratio 0.02 --training.num_epochs 1 --dataset.max_length 2048 \
    --dataset.eval_fraction 0.02 --training.logging_steps 12 --training.save_steps 48 --training.save_total_limit 1000 \
    $(ls -d $out/checkpoint-* >/dev/null 2>&1 && echo --training.resume_from_checkpoint last) --training.output_dir $out \
    --dataset.path runs/data/smollm2_big_g2 --modeling.init_draft runs/smollm2_eagle3_warm7 \
    --training.learning_rate 6e-4 --training.eval_steps 200 "$@"
}
train runs/smollm2_eagle3_grow1 --modeling.grow_layers 1 > runs/s22/train_grow1.log 2>&1 || exit 1
train runs/smollm2_eagle3_g2again > runs/s22/train_g2again.log 2>&1 || exit 1
runs/s17/bench_tau.sh s22_grow1 runs/smollm2_eagle3_grow1 mtbench10 heldout24 || exit 1
runs/s17/bench_tau.sh s22_g2again runs/smollm2_eagle3_g2again mtbench10 heldout24 || exit 1
echo ALL DONE
