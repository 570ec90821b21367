set -x
D=specforge_het/drafts/smollm2-135m-instruct-eagle3
.venv/bin/python -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $D --inference.max_new_tokens 128 --prompts mtbench:10 --methods hf,ours-base,ours-tree,ours-auto,ours-auto-lookup --outfile runs/s12/bench_smollm2_mtbench10.json
.venv/bin/python -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --modeling.draft_path $D --inference.max_new_tokens 128 --prompts specforge_het/data/files/heldout_prompts.jsonl --methods hf,ours-base,ours-tree,ours-auto,ours-auto-lookup --outfile runs/s12/bench_smollm2_heldout24.json
