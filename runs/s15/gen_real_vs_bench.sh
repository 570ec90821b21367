#!/usr/bin/env bash
# A real `data_gen gen_dataset` run against `data_gen bench_gen` on the same 256 prompts, same dtype (auto),
# batch 128, <= 256 new tokens, one after the other on this host (session 15). The real run's tokens/s is
# in its report line and in meta.json; the bench writes JSON.
set -euo pipefail
cd "$(dirname "$0")/../.."
P=runs/prompts/smollm2_mix2.jsonl
rm -rf runs/s15/gen_real
/usr/bin/time -v .venv/bin/python -m specforge_het.data_gen gen_dataset $P --@smollm2 --dataset_generation.dtype auto \
  --dataset_generation.batch_size 128 --dataset_generation.max_new_tokens 256 --dataset_generation.ds_range 0,256 \
  --dataset_generation.output_dir runs/s15/gen_real 2>&1 | tail -40
.venv/bin/python -m specforge_het.data_gen bench_gen --@smollm2 --prompts $P --n 256 --max_new 256 \
  --dtypes float32 --batches 128 --hf_batches= --outfile runs/s15/gen_bench_256.json 2>&1 | tail -20
