#!/bin/bash
# Session 29: does `--eagle_v3.reachable_k 4` (GRIFFIN-style token-alignable training) raise tau? Stage L's recipe exactly (the shipped stage-K draft, one epoch
# on part L, 7 unroll steps, lr 6e-4, batch 4, float32 on this host), only the loss weights changed (steps after a top-4 miss at a position carry none); stage L (loss ce,
# runs/smollm2_eagle3_warm12, benched in session 26 as runs/s17/bench/stageL_*.json) is the control.
# Resumes where it stopped. Then the same tau bench and the paired comparison.
cd "$(dirname "$0")/../.."
OUT=runs/smollm2_eagle3_l_reach
[ -f $OUT/model.safetensors ] || .venv/bin/python -m specforge_het.train --@smollm2 --@eagle_v3 --training.mode offline \
  --training.per_device_batch_size 4 --training.warmup_ratio 0.02 --training.num_epochs 1 --dataset.max_length 2048 \
  --dataset.eval_fraction 0.02 --training.logging_steps 12 --training.save_steps 48 --training.save_total_limit 2 \
  $( ls -d $OUT/checkpoint-* >/dev/null 2>&1 && echo --training.resume_from_checkpoint last) --training.output_dir $OUT \
  --dataset.path runs/data/smollm2_big_l --modeling.init_draft specforge_het/drafts/smollm2-135m-instruct-eagle3 \
  --training.ttt_steps 7 --training.learning_rate 6e-4 --training.eval_steps 200 --training.loss ce --eagle_v3.reachable_k 4 || exit 1
runs/s17/bench_tau.sh stageLreach $OUT mtbench10 heldout24 || exit 1
.venv/bin/python runs/s26/paired.py stageL stageLreach | tee runs/s29/paired_L_Lreach.json
.venv/bin/python runs/s26/paired.py stageK stageLreach | tee runs/s29/paired_K_Lreach.json
