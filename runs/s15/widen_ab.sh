#!/bin/bash
# Session 15: does widening the shipped SmolLM2 draft's vocabulary raise tau? Its 8192 rows were chosen on the
# 874-conversation data of the draft it was warm-started from, and cover 85.8 % of the base's greedy tokens on
# MT-Bench 10x2 (runs/s15/vocab_coverage.py). Two arms, identical but for --modeling.widen_vocab:
#   ce:   the shipped draft trained on for STEPS steps (the control: more training alone moves tau)
#   wide: the same, after widening it to 16384 rows (capped at the tokens the data uses: 11,422 here; the answer tokens it could not propose,
#         new head rows from the base's LM head)
# offline over runs/data/smollm2_big_768, 7 unroll steps, lr 3e-4 decaying to 0, the same shuffled order.
# Then greedy tau (bench, tree_cpu, 128 tokens) on MT-Bench 10x2 and the 24 held-out prompts.
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
STEPS=${STEPS:-40}
OUT=runs/widen_ab
mkdir -p $OUT
for A in ce wide; do
  D=$OUT/$A
  EXTRA=$( [ $A = wide ] && echo --modeling.widen_vocab 16384 --modeling.widen_init base )  # base: as measured (session 17 made map the default)
  [ -f $D/model.safetensors ] || $PY -m specforge_het.train --@smollm2 --@eagle_v3 --training.mode offline \
    --dataset.path runs/data/smollm2_big_768 --modeling.init_draft specforge_het/drafts/smollm2-135m-instruct-eagle3 $EXTRA \
    --training.ttt_steps 7 --training.per_device_batch_size 2 --training.learning_rate 3e-4 --training.warmup_ratio 0.02 \
    --training.num_epochs 1 --training.max_steps $STEPS --dataset.max_length 2048 --dataset.eval_fraction 0.02 \
    --training.logging_steps 10 --training.eval_steps $STEPS --training.save_steps 20 --training.save_total_limit 2 \
    --training.output_dir $D \
    $(ls -d $D/checkpoint-* >/dev/null 2>&1 && echo --training.resume_from_checkpoint last) > $D.train.log 2>&1 || exit 1
done
for A in ce wide; do
  D=$OUT/$A
  for P in mtbench:10 specforge_het/data/files/heldout_prompts.jsonl; do
    N=$( [ $P = mtbench:10 ] && echo mtbench10 || echo heldout24 )
    [ -f $D/bench_$N.json ] || $PY -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $D \
      --prompts $P --inference.max_new_tokens 128 --methods ours-tree --outfile $D/bench_$N.json > $D/bench_$N.log 2>&1 || exit 1
  done
done
echo ALL DONE
