#!/bin/bash
# Session 21's device run: install the carried wheels, then the doctor, tests/test_cuda.py, throughput.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi; python3 -c "import torch, transformers, datasets, fire, peft, accelerate, pyarrow; print('torch', torch.__version__, torch.version.cuda, 'transformers', transformers.__version__, 'datasets', datasets.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'pyarrow', pyarrow.__version__, torch.cuda.get_device_name())"; nproc; } > $OUT/env.txt 2>&1
tail -3 $OUT/env.txt
echo "== doctor $(( $(date +%s) - T0 )) s"
timeout 220 python3 -m specforge_het.doctor --out $OUT/doctor.json > $OUT/doctor.log 2>&1; echo "doctor rc $?"
tail -25 $OUT/doctor.log
echo "== test_cuda $(( $(date +%s) - T0 )) s"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -o addopts="" --durations=8 > $OUT/test_cuda.log 2>&1; echo "pytest rc $?"
grep -E "passed|failed|FAILED|Error" $OUT/test_cuda.log | tail -25
echo "== throughput $(( $(date +%s) - T0 )) s"
timeout 110 python3 .gpu/gpu_throughput.py $OUT/throughput.json > $OUT/throughput.log 2>&1; echo "throughput rc $?"
grep '^{' $OUT/throughput.log; tail -3 $OUT/throughput.log
echo "== end $(( $(date +%s) - T0 )) s"
