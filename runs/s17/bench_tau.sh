#!/bin/bash
# Session 17: greedy tau of a draft (tree_cpu: dynamic, depth 5, top-k 4, 12 tokens; no lookup; 128 new tokens;
# float32) on the prompt sets given (default: MT-Bench 81-90 both turns, the 24 held-out prompts, ten MT-Bench
# questions of the other categories: runs/s16/mtbench_other10.jsonl). Usage: bench_tau.sh NAME DRAFT [SETS...]
# SETS: mtbench10 heldout24 other10. The shipped draft's figures for the same sets: runs/s16/bench/shipped_*.json.
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
NAME=$1; DRAFT=$2; shift 2; SETS=${@:-mtbench10 heldout24 other10}; OUT=runs/s17/bench; mkdir -p $OUT
for S in $SETS; do
  case $S in mtbench10) P=mtbench:10;; other10) P=runs/s16/mtbench_other10.jsonl;; heldout24) P=specforge_het/data/files/heldout_prompts.jsonl;; esac
  [ -f $OUT/${NAME}_$S.json ] || $PY -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $DRAFT \
    --prompts $P --inference.max_new_tokens 128 --methods ours-tree --outfile $OUT/${NAME}_$S.json > $OUT/${NAME}_$S.log 2>&1 || exit 1
done
echo DONE $NAME
