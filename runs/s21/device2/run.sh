#!/bin/bash
# Session 21's second device run: SDPA without cuDNN; the doctor again, throughput, a CUDA test subset.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "== doctor $(( $(date +%s) - T0 )) s"
timeout 100 python3 -m specforge_het.doctor --out $OUT/doctor.json > $OUT/doctor.log 2>&1; echo "doctor rc $?"
tail -22 $OUT/doctor.log
echo "== throughput $(( $(date +%s) - T0 )) s"
timeout 150 python3 .gpu/gpu_throughput.py $OUT/throughput.json > $OUT/throughput.log 2>&1; echo "throughput rc $?"
grep '^{' $OUT/throughput.log; tail -3 $OUT/throughput.log
echo "== test_cuda subset $(( $(date +%s) - T0 )) s"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "oracle or bf16 or llama-eagle_v3_reduced" > $OUT/test_cuda.log 2>&1; echo "pytest rc $?"
grep -E "passed|failed|FAILED|Error" $OUT/test_cuda.log | tail -15
echo "== end $(( $(date +%s) - T0 )) s"
