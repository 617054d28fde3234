#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU whose image already holds cupy, numba,
# torch, pytest and hypothesis. Installs nothing; runs from the working tree.
#
#   bash bench/gpu_check.sh OUT_DIR      (default: $OUT, else ./gpu_out)
#
# Writes into OUT_DIR (7 files at most): info.txt, pytest.txt, pytest.xml,
# gpu_bench.json, gpu_bench.txt, gpu_bench.err; prints the benchmark table last.
# Budget: about 4 minutes: the device tests, then the benchmark.
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_out}}
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export FUSEDOPT_CACHE_DIR=${FUSEDOPT_CACHE_DIR:-/tmp/fusedopt-gpu-cache}
py=$(command -v python3 || command -v python)
status=0

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  timeout 60 "$py" -m fusedopt info 2>&1; } > "$out/info.txt" || status=1
cat "$out/info.txt"

# The tests that need the device: every rule x dtype x size against the oracle on the GPU,
# streams, DLPack with torch, the arena optimizer and checkpoints, the profiler's OOM
# handling, the measured batch-size plan (CuPy, torch CUDA); then the CuPy path of the optimizers and the language's meaning on the host.
timeout 150 "$py" -m pytest -q -p no:cacheprovider --junitxml="$out/pytest.xml" \
  tests/test_gpu.py tests/test_gpu_measured_plan.py tests/test_gpu_precision.py tests/test_dispatch.py > "$out/pytest.txt" 2>&1 || status=1
tail -n 8 "$out/pytest.txt"

timeout 150 "$py" bench/gpu_bench.py --out "$out" --sizes 20,24,28 --repeats 15 --precision \
  > "$out/gpu_bench.txt" 2> "$out/gpu_bench.err" || status=1
tail -n 3 "$out/gpu_bench.err"
cat "$out/gpu_bench.txt"
exit $status
