#!/bin/bash
# Session 18: peak resident memory of a real gen_dataset run with the slot K/V buffers sized for max_length
# from the start (the code before 6dfd259, checked out as a git worktree in $OLD) and growing with the longest
# row (this checkout). Same 128 prompts (rows 0-127 of runs/prompts/smollm2_mix2.jsonl), batch 128, <= 64 new
# tokens, float32, max_length 2048. Usage: [TS="new old"] runs/s18/kv_memory.sh [OLD]   (OLD: a worktree of cf45cf7, default /tmp/oldtree)
cd "$(dirname "$0")/../.."
OLD=${1:-/tmp/oldtree}
PY=$PWD/.venv/bin/python
for T in ${TS:-new old}; do
  D=$PWD; [ $T = old ] && D=$OLD
  rm -rf /tmp/kvmem_$T
  (cd $D && /usr/bin/time -v $PY -m specforge_het.data_gen gen_dataset $PWD/runs/prompts/smollm2_mix2.jsonl --@smollm2 \
    --dataset_generation.dtype float32 --dataset_generation.batch_size 128 --dataset_generation.max_new_tokens 64 \
    --dataset_generation.ds_range 0,128 --dataset_generation.output_dir /tmp/kvmem_$T) > runs/s18/kv_memory_$T.log 2>&1
  echo "$T: $(grep 'Maximum resident' runs/s18/kv_memory_$T.log)"
done
