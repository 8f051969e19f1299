#!/usr/bin/env bash
# The device check for a session lent a GPU (not run by CI). Once, from the repo root here:
#   mkdir -p .git/info; echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 -d .whl pot
# then run this with the device tool, carrying .whl:  bash benchmarks/gpu.sh
# It checks CUDA against the CPU (the gpu-marked tests with their CPU twins, and every bench row's
# values against the per-pair reference), then times every distance at B = 256 and 1024 (l2 and
# fastft also with cuda_graph=True: the '+graph' rows), a ResNet-18 training step, and the scale
# cases (K = 1000 at B = 16384; TestCPCC on 100k points).
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:src
else
  export PYTHONPATH=src
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/otcpcc-gpu}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, ot; print('torch', torch.__version__, 'pot', ot.__version__)"
echo "== gpu-marked tests (each compares CUDA with the CPU; their CPU twins run in CI)"
timeout 120 python3 -m pytest -p no:cacheprovider -p no:warnings -m gpu tests/ 2>&1 | tail -3
echo "== otcpcc train on CUDA (DataLoader workers and pin-memory thread, bf16 autocast): default vs --cuda-graph"
for g in --no-cuda-graph --cuda-graph; do
  timeout 120 python3 -m otcpcc train --device cuda --amp --workers 2 --epochs 3 --batch-size 512 --no-progress \
    --force $g --out "$OUT/train$g" 2>&1 | grep -E "Warning|error|capture|cuda_graph" | head -5
  python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], {k: m[k] for k in ('test_acc','test_cpcc','train_loss')})" \
    "$OUT/train$g/metrics.json" "$g" 2>&1 | tail -1
done
echo "== distances, B = 256 and 1024, against the per-pair reference (values + timings)"
timeout 240 python3 -m otcpcc.bench --device cuda --batch-sizes 256,1024 --repeats 20 --warmup 3 --cuda-graph \
  --reference-repeats 1 --reference-budget 4 --train-step --train-budget 10 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
echo "== K = 1000, B = 16384: fastft, default and cuda_graph (goal <= 20 ms)"
timeout 90 python3 -m otcpcc.bench --device cuda --big --cuda-graph --repeats 10 --no-reference 2>&1 | tee "$OUT/big.txt"
echo "== scale cases on CUDA"
timeout 150 python3 benchmarks/gpu_scale.py 2>&1 | tee "$OUT/scale.txt"
echo "== syncs and launches per call"
timeout 90 python3 benchmarks/gpu_profile.py --quick 2>&1 | grep -v "^ *$" | tee "$OUT/profile.txt" | grep -E "===|sync|launch" | head -40
echo "== where exact EMD's time goes on CUDA (host LPs; operator table by CPU time)"
timeout 60 python3 benchmarks/gpu_profile.py --only emd 2>&1 | grep -v "^ *$" | tee "$OUT/profile_emd.txt" | head -24
