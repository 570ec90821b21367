#!/bin/bash
# Session 21's third device run: the doctor after the SDPA restriction moved into the checkpointed attention.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "== doctor $(( $(date +%s) - T0 )) s"
timeout 75 python3 -m specforge_het.doctor --engine false --out $OUT/doctor.json > $OUT/doctor.log 2>&1; echo "doctor rc $?"
tail -22 $OUT/doctor.log
echo "== train throughput $(( $(date +%s) - T0 )) s"
TP_ONLY=train timeout 45 python3 .gpu/gpu_throughput.py $OUT/throughput.json > $OUT/throughput.log 2>&1; echo "throughput rc $?"
grep '^{' $OUT/throughput.log; tail -2 $OUT/throughput.log
echo "== end $(( $(date +%s) - T0 )) s"
