set -x
cd /work/main
while [ ! -f docs/results/bench_smollm2_fastlinears_heldout24.json ]; do sleep 15; done
sleep 5
pkill -f bench_all.sh; pkill -f "specforge_het.bench "; sleep 3
make -B -o features-gemma-big runs/gemma_het_big/model.safetensors BIN=.venv/bin GEMMA_STEPS=982 > runs/gemma_het_big.log3 2>&1 || exit 1
.venv/bin/python -m specforge_het.drafts ship runs/gemma_het_big gemma3-270m-smollm2-het --vocab_rows 8192 --rebuild "make draft-gemma3-het-big" > runs/gemma_het_big.ship2.log 2>&1 || exit 1
.venv/bin/python -m specforge_het.bench --@gemma3_smollm2_het --@tree_cpu --modeling.draft_path gemma3-270m-smollm2-het --inference.max_new_tokens 96 --prompts mtbench:3 --methods hf,ours-base,ours-tree,ours-auto,ours-lookup,ours-auto-lookup --outfile docs/results/bench_gemma3_fastlinears_mtbench3.json
.venv/bin/python -m specforge_het.bench --@gemma3_smollm2_het --@tree_cpu --modeling.draft_path gemma3-270m-smollm2-het --inference.max_new_tokens 96 --prompts specforge_het/data/files/heldout_prompts.jsonl:8 --methods hf,ours-base,ours-tree,ours-auto,ours-auto-lookup --outfile docs/results/bench_gemma3_fastlinears_heldout8.json
