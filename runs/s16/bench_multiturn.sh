#!/bin/bash
# Session 16: greedy tau of a draft (tree_cpu: dynamic, depth 5, top-k 4, 12 tokens; no lookup; 128 new tokens;
# float32) on three prompt sets: MT-Bench questions 81-90 (`mtbench:10`, writing, both turns), ten MT-Bench
# questions of the other categories (runs/s16/mtbench_other10.jsonl: ids 93 96 103 106 113 116 126 136 146 156,
# both turns) and the 24 held-out single-turn prompts. Usage: bench_multiturn.sh NAME DRAFT
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
NAME=$1; DRAFT=$2; OUT=runs/s16/bench; mkdir -p $OUT
for P in mtbench:10 runs/s16/mtbench_other10.jsonl specforge_het/data/files/heldout_prompts.jsonl; do
  case $P in mtbench:10) S=mtbench10;; *other*) S=other10;; *) S=heldout24;; esac
  [ -f $OUT/${NAME}_$S.json ] || $PY -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $DRAFT \
    --prompts $P --inference.max_new_tokens 128 --methods ours-tree --outfile $OUT/${NAME}_$S.json > $OUT/${NAME}_$S.log 2>&1 || exit 1
done
echo DONE $NAME
