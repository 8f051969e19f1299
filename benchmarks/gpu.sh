#!/usr/bin/env bash
# The device check for a session lent a GPU (not run by CI). From the repo root here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pot
# then run this with the device tool, carrying .whl:  bash benchmarks/gpu.sh
# It checks the CUDA results against the CPU (the gpu-marked tests and their CPU twins), then
# times every distance against the per-pair reference, a ResNet-18 step, and the K=1000 case.
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
python3 -m pytest -q -p no:cacheprovider tests/test_distances.py -k "on_device" 2>&1 | tail -3
python3 -m otcpcc.bench --device cuda --batch-sizes 256,1024 --repeats 20 --reference-repeats 1 \
  --reference-budget 20 --train-step --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
python3 -m otcpcc.bench --device cuda --big --repeats 10 --no-reference --json "$OUT/big.json" 2>&1 | tee "$OUT/big.txt"
