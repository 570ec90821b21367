#!/bin/bash
# Session 14: does the acceptance-targeting loss (total variation) raise tau? Three fresh SmolLM2 EagleV3
# drafts, identical but for --training.loss (ce / tv / ce+tv): layer 29 of the base, rope theta inherited,
# 8192-row vocabulary, 7 unroll steps, offline over runs/data/smollm2_big_768 (merged from runs/data/smollm2_big after add_features) (same shuffled order), STEPS steps.
# Then tau of each: greedy (bench, tree_cpu) on MT-Bench 10x2 and the 24 held-out prompts, and sampled
# (temperature 1, lossless) on the held-out prompts. Then the shipped draft against plain HF and HF prompt lookup.
# Prerequisites (what session 14 ran first): the stored features and the merged training folder:
#   .venv/bin/python -m specforge_het.data_gen add_features runs/data/smollm2_big --@smollm2 --@eagle_v3
#   .venv/bin/python -m specforge_het.data_gen merge_datasets runs/data/smollm2_big_768 runs/data/smollm2_big --allow_gaps
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
STEPS=${STEPS:-100}
OUT=runs/tv_ab
for L in ce tv ce+tv; do
  D=$OUT/${L/+/_}
  [ -f $D/model.safetensors ] || $PY -m specforge_het.train --@smollm2 --@eagle_v3 --training.mode offline \
    --dataset.path runs/data/smollm2_big_768 --modeling.init_from smollm2-135m-instruct --modeling.init_layers 29 \
    --modeling.draft_vocab_size 8192 --training.ttt_steps 7 --training.per_device_batch_size 2 \
    --training.learning_rate 1e-3 --training.warmup_ratio 0.02 --training.num_epochs 1 --training.max_steps $STEPS \
    --dataset.max_length 2048 --dataset.eval_fraction 0.02 --training.logging_steps 10 --training.eval_steps $STEPS \
    --training.save_steps 25 --training.save_total_limit 2 --training.loss $L --training.output_dir $D \
    $(ls -d $D/checkpoint-* >/dev/null 2>&1 && echo --training.resume_from_checkpoint last) > $D.train.log 2>&1 || exit 1
done
for L in ce tv ce+tv; do
  runs/s14/decode_arm.sh $OUT/${L/+/_} || exit 1  # (the same commands were inline when it ran)
done
[ -f runs/s14/bench_peers_mtbench10.json ] || $PY -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu \
  --modeling.draft_path smollm2-135m-instruct-eagle3 --prompts mtbench:10 --inference.max_new_tokens 128 \
  --methods hf,hf-pld,ours-base,ours-auto,ours-auto-lookup --outfile runs/s14/bench_peers_mtbench10.json \
  > runs/s14/bench_peers_mtbench10.log 2>&1 || exit 1
echo ALL DONE
