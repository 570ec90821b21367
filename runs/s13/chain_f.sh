#!/bin/bash
# Session 13, after chain_d: ship stage D under a candidate name, bench it as the shipped draft was benched
# (runs/s12/bench_all.sh), then the data-generation A/B of the attention blocks.
set -x
cd /work/main
while pgrep -f chain_d.sh > /dev/null; do sleep 20; done
[ -f runs/smollm2_eagle3_warm4/model.safetensors ] || exit 1
B=.venv/bin/python
$B -m specforge_het.drafts ship runs/smollm2_eagle3_warm4 smollm2-135m-instruct-eagle3-d --rebuild "make draft-smollm2-eagle3-breadth-d" || exit 1
D=specforge_het/drafts/smollm2-135m-instruct-eagle3-d
M=hf,ours-base,ours-auto,ours-auto-lookup
$B -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $D --inference.max_new_tokens 128 --prompts mtbench:10 --methods $M --outfile runs/s13/bench_d_mtbench10.json
$B -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $D --inference.max_new_tokens 128 --prompts specforge_het/data/files/heldout_prompts.jsonl --methods $M --outfile runs/s13/bench_d_heldout24.json
$B -m specforge_het.data_gen bench_gen --@smollm2 --prompts runs/prompts/smollm2_mix2.jsonl --n 256 --max_new 256 --dtypes bfloat16 --batches 128 --attn_rows 16,512 --hf_batches '' --outfile runs/s13/gen_ab_256.json
echo "== done $(date)"
