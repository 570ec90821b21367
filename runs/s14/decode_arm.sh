#!/bin/bash
# Session 14: tau of one loss-comparison draft D (run from the repository root): greedy (bench, tree_cpu) on
# MT-Bench 10x2 and the 24 held-out prompts, and sampled (temperature 1, lossless, seed 0) on the held-out prompts.
D=$1
PY=.venv/bin/python
for P in mtbench:10 specforge_het/data/files/heldout_prompts.jsonl; do
  N=$( [ $P = mtbench:10 ] && echo mtbench10 || echo heldout24 )
  [ -f $D/bench_$N.json ] || $PY -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $D \
    --prompts $P --inference.max_new_tokens 128 --methods ours-tree --outfile $D/bench_$N.json > $D/bench_$N.log 2>&1 || exit 1
done
[ -f $D/sampled_heldout24.jsonl ] || $PY -m specforge_het.inference --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $D \
  --prompts specforge_het/data/files/heldout_prompts.jsonl --inference.max_new_tokens 128 --inference.temperature 1.0 \
  --inference.seed 0 --outfile $D/sampled_heldout24.jsonl > $D/sampled_heldout24.log 2>&1 || exit 1
