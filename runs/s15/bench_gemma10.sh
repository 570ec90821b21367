#!/usr/bin/env bash
# Gemma-3 heterogeneous draft at the issue's conditions (MT-Bench 10 x 2, 128 tokens), against plain HF (session 15).
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m specforge_het.bench --@gemma3_smollm2_het --@tree_cpu --modeling.draft_path gemma3-270m-smollm2-het \
  --inference.max_new_tokens 128 --prompts mtbench:10 --methods hf,ours-base,ours-auto,ours-auto-lookup \
  --outfile runs/s15/bench_gemma3_mtbench10.json
