#!/bin/bash
# Session 30: the shipped drafts under the EAGLE-2 paper-sized tree (`--@tree_gpu`: dynamic, depth 6, top-k 10,
# 60 tokens): SmolLM2 with the prompt-lookup branch merged in (ours-tree-lookup, 10 lookup tokens) on MT-Bench 81-90
# and the 24 held-out prompts; the Gemma-3 heterogeneous draft alone on MT-Bench 81-90. Greedy, float32, 128 tokens.
cd "$(dirname "$0")/../.."
PY=.venv/bin/python; OUT=runs/s30/bench; mkdir -p $OUT
for S in mtbench10 heldout24; do
  case $S in mtbench10) P=mtbench:10;; heldout24) P=specforge_het/data/files/heldout_prompts.jsonl;; esac
  [ -f $OUT/gpuLookupK_$S.json ] || $PY -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_gpu \
    --modeling.draft_path specforge_het/drafts/smollm2-135m-instruct-eagle3 --prompts $P --inference.max_new_tokens 128 \
    --methods ours-tree-lookup --outfile $OUT/gpuLookupK_$S.json > $OUT/gpuLookupK_$S.log 2>&1 || exit 1
done
[ -f $OUT/gpuGemma_mtbench10.json ] || $PY -m specforge_het.bench --@gemma3_smollm2_het --@tree_gpu \
  --modeling.draft_path gemma3-270m-smollm2-het --prompts mtbench:10 --inference.max_new_tokens 128 \
  --methods ours-tree --outfile $OUT/gpuGemma_mtbench10.json > $OUT/gpuGemma_mtbench10.log 2>&1 || exit 1
echo DONE
