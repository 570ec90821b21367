#!/bin/bash
# Session 17: does a map-widened SmolLM2 draft gain tau once fine-tuned? Two arms, identical but for the start:
#   ctrl: the shipped draft (8192 rows)
#   wide: runs/s17/wide_map (the shipped draft widened to 16384 rows with --modeling.widen_init map, no training:
#         python runs/s17/widen_zero.py runs/s17/wide_map 16384 map)
# each trained on for STEPS steps offline over runs/data/smollm2_big_768 (make features-smollm2-big), 7 unroll
# steps, 2 conversations a step, lr 3e-4 decaying to 0, the same shuffled order. Then greedy tau (bench_tau.sh).
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
STEPS=${STEPS:-150}
OUT=runs/s17/ft
mkdir -p $OUT
for A in ctrl wide; do
  D=$OUT/$A
  INIT=$( [ $A = wide ] && echo runs/s17/wide_map || echo specforge_het/drafts/smollm2-135m-instruct-eagle3 )
  [ -f $D/model.safetensors ] || $PY -m specforge_het.train --@smollm2 --@eagle_v3 --training.mode offline \
    --dataset.path runs/data/smollm2_big_768 --modeling.init_draft $INIT \
    --training.ttt_steps 7 --training.per_device_batch_size 2 --training.learning_rate 3e-4 --training.warmup_ratio 0.02 \
    --training.num_epochs 1 --training.max_steps $STEPS --dataset.max_length 2048 --dataset.eval_fraction 0.02 \
    --training.logging_steps 10 --training.eval_steps $STEPS --training.save_steps 50 --training.save_total_limit 2 \
    --training.output_dir $D \
    $(ls -d $D/checkpoint-* >/dev/null 2>&1 && echo --training.resume_from_checkpoint last) > $D.train.log 2>&1 || exit 1
done
echo TRAINED
