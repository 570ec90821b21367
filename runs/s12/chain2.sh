set -x
cd /work/main
while [ ! -f docs/results/bench_smollm2_fastlinears_heldout24.json ]; do sleep 15; done
sleep 5
pkill -f bench_all.sh; pkill -f "specforge_het.bench "; sleep 3
mkdir -p runs/s12/v1 && cp docs/results/bench_smollm2_fastlinears_* runs/s12/v1/
.venv/bin/python -m specforge_het.bench.linears --model gemma3-270m --rows 1,2,4,8,12,16 --reps 5 --outfile docs/results/linears_gemma3_epyc.json > runs/s12/linears_gemma.log 2>&1
.venv/bin/python -m specforge_het.bench.linears --model smollm2-135m-instruct --rows 1,2,4,8,12,16 --reps 5 --outfile docs/results/linears_smollm2_epyc.json > runs/s12/linears_smollm2.log 2>&1
make -B -o features-gemma-big runs/gemma_het_big/model.safetensors BIN=.venv/bin GEMMA_STEPS=982 > runs/gemma_het_big.log3 2>&1 || exit 1
.venv/bin/python -m specforge_het.drafts ship runs/gemma_het_big gemma3-270m-smollm2-het --vocab_rows 8192 --rebuild "make draft-gemma3-het-big" > runs/gemma_het_big.ship2.log 2>&1 || exit 1
rm -f /root/.cache/specforge_het/cost_model/*.json
.venv/bin/python -m specforge_het.bench --@gemma3_smollm2_het --@tree_cpu --modeling.draft_path gemma3-270m-smollm2-het --inference.max_new_tokens 96 --prompts mtbench:3 --methods hf,ours-base,ours-tree,ours-auto,ours-lookup,ours-auto-lookup --outfile docs/results/bench_gemma3_fastlinears_mtbench3.json
.venv/bin/python -m specforge_het.bench --@gemma3_smollm2_het --@tree_cpu --modeling.draft_path gemma3-270m-smollm2-het --inference.max_new_tokens 96 --prompts specforge_het/data/files/heldout_prompts.jsonl:8 --methods hf,ours-base,ours-tree,ours-auto,ours-auto-lookup --outfile docs/results/bench_gemma3_fastlinears_heldout8.json
D=specforge_het/drafts/smollm2-135m-instruct-eagle3
M=hf,ours-base,ours-tree,ours-auto,ours-auto-lookup
.venv/bin/python -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $D --inference.max_new_tokens 128 --prompts mtbench:10 --methods $M --outfile docs/results/bench_smollm2_fastlinears_mtbench10.json
.venv/bin/python -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $D --inference.max_new_tokens 128 --prompts specforge_het/data/files/heldout_prompts.jsonl --methods $M --outfile docs/results/bench_smollm2_fastlinears_heldout24.json
make demo > runs/s12/demo.log 2>&1
echo CHAIN DONE
