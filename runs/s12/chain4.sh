set -x
cd /work/main
rm -f /root/.cache/specforge_het/cost_model/*.json
.venv/bin/python -m specforge_het.bench.linears --model gemma3-270m --rows 1,2,4,8,12,16 --reps 5 --outfile docs/results/linears_gemma3_epyc.json > runs/s12/linears_gemma.log 2>&1
.venv/bin/python -m specforge_het.bench.linears --model smollm2-135m-instruct --rows 1,2,4,8,12,16 --reps 5 --outfile docs/results/linears_smollm2_epyc.json > runs/s12/linears_smollm2.log 2>&1
make demo > runs/s12/demo.log 2>&1
D=specforge_het/drafts/smollm2-135m-instruct-eagle3
M=hf,ours-base,ours-tree,ours-auto,ours-auto-lookup
.venv/bin/python -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $D --inference.max_new_tokens 128 --prompts mtbench:10 --methods $M --outfile docs/results/bench_smollm2_fastlinears_mtbench10.json
.venv/bin/python -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $D --inference.max_new_tokens 128 --prompts specforge_het/data/files/heldout_prompts.jsonl --methods $M --outfile docs/results/bench_smollm2_fastlinears_heldout24.json
.venv/bin/python -m specforge_het.bench --@gemma3_smollm2_het --@tree_cpu --modeling.draft_path gemma3-270m-smollm2-het --inference.max_new_tokens 96 --prompts mtbench:3 --methods hf,ours-base,ours-tree,ours-auto,ours-lookup,ours-auto-lookup --outfile docs/results/bench_gemma3_fastlinears_mtbench3.json
.venv/bin/python -m specforge_het.bench --@gemma3_smollm2_het --@tree_cpu --modeling.draft_path gemma3-270m-smollm2-het --inference.max_new_tokens 96 --prompts specforge_het/data/files/heldout_prompts.jsonl:8 --methods hf,ours-base,ours-tree,ours-auto,ours-auto-lookup --outfile docs/results/bench_gemma3_fastlinears_heldout8.json
echo CHAIN DONE
