#!/bin/bash
# Session 30: greedy tau of a draft under a given tree (no lookup; 128 new tokens; float32; `auto` fast paths) on
# MT-Bench 81-90 (both turns) and the 24 held-out prompts. Usage: bench_tree.sh NAME DRAFT TREE_FLAGS...
# e.g. bench_tree.sh gpuK specforge_het/drafts/smollm2-135m-instruct-eagle3 --@tree_gpu
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
NAME=$1; DRAFT=$2; shift 2; OUT=runs/s30/bench; mkdir -p $OUT
for S in mtbench10 heldout24; do
  case $S in mtbench10) P=mtbench:10;; heldout24) P=specforge_het/data/files/heldout_prompts.jsonl;; esac
  [ -f $OUT/${NAME}_$S.json ] || $PY -m specforge_het.bench --@smollm2 --@eagle_v3 "$@" --modeling.draft_path $DRAFT \
    --prompts $P --inference.max_new_tokens 128 --methods ours-tree --outfile $OUT/${NAME}_$S.json > $OUT/${NAME}_$S.log 2>&1 || exit 1
done
echo DONE $NAME
