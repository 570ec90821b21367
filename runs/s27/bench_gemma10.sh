#!/usr/bin/env bash
# Session 27: the shipped Gemma-3 heterogeneous draft at the issue's conditions (MT-Bench 10 x 2, 128 tokens) against
# plain HF on a host without AVX-512 (float32), with the fused projections; the depth-5 tree row added for tau.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m specforge_het.bench --@gemma3_smollm2_het --@tree_cpu --modeling.draft_path gemma3-270m-smollm2-het \
  --inference.max_new_tokens 128 --prompts mtbench:10 --methods hf,ours-base,ours-tree,ours-auto,ours-auto-lookup \
  --outfile runs/s27/bench_gemma3_mtbench10.json
