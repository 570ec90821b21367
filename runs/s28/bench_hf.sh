#!/bin/bash
# Session 28: runs/s20/bench_hf.sh with our rows on `--inference.fast_paths compile` (the base's and the draft's
# layers compiled; models/compiled.py): the shipped SmolLM2 draft against plain HF and plain HF prompt lookup,
# MT-Bench 81-90 both turns and the 24 held-out prompts, 128 new tokens, greedy, float32.
# Usage: runs/s28/bench_hf.sh NAME [DRAFT] [FAST_PATHS]   (defaults: the shipped folder, compile)
cd "$(dirname "$0")/../.."
NAME=$1; D=${2:-specforge_het/drafts/smollm2-135m-instruct-eagle3}; F=${3:-compile}; OUT=runs/s20/bench; mkdir -p $OUT
M=hf,hf-pld,ours-base,ours-tree,ours-auto,ours-auto-lookup
for S in mtbench10 heldout24; do
  case $S in mtbench10) P=mtbench:10;; heldout24) P=specforge_het/data/files/heldout_prompts.jsonl;; esac
  [ -f $OUT/${NAME}_$S.json ] || .venv/bin/python -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu \
    --modeling.draft_path $D --prompts $P --inference.max_new_tokens 128 --methods $M --inference.fast_paths $F \
    --outfile $OUT/${NAME}_$S.json > $OUT/${NAME}_$S.log 2>&1 || exit 1
done
echo DONE $NAME
