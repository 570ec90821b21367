#!/bin/bash
# Session 30: the shipped SmolLM2 draft on a third prompt set, ten MT-Bench questions of the other categories
# (runs/s16/mtbench_other10.jsonl, both turns), with tree_cpu and with the paper's tree (tree_gpu); greedy, float32,
# 128 tokens. Usage: runs/s30/bench_other10.sh
cd "$(dirname "$0")/../.."
PY=.venv/bin/python; OUT=runs/s30/bench; D=specforge_het/drafts/smollm2-135m-instruct-eagle3
for T in tree_cpu tree_gpu; do
  [ -f $OUT/other10_$T.json ] || $PY -m specforge_het.bench --@smollm2 --@eagle_v3 --@$T --modeling.draft_path $D \
    --prompts runs/s16/mtbench_other10.jsonl --inference.max_new_tokens 128 --methods ours-tree \
    --outfile $OUT/other10_$T.json > $OUT/other10_$T.log 2>&1 || exit 1
done
echo DONE
