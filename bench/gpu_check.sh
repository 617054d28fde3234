#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU whose image already holds cupy, numba,
# torch, pytest and hypothesis. Installs nothing; runs from the working tree.
#
#   bash bench/gpu_check.sh OUT_DIR      (default: $OUT, else ./gpu_out)
#   PYTHON=python3.12 bash bench/gpu_check.sh ...   (the interpreter; default python3)
#
# Writes into OUT_DIR (7 files): info.txt, pytest.txt, gpu_model.json, gpu_per_call.json,
# gpu_bench.json, gpu_bench.txt, gpu_bench.err; prints the benchmark tables last.
# Budget: under 4 minutes in all (every step has its timeout: 10+20+90+40+10+60+5 s).
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_out}}
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export FUSEDOPT_CACHE_DIR=${FUSEDOPT_CACHE_DIR:-/tmp/fusedopt-gpu-cache}
py=${PYTHON:-python3}
status=0

{ timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  timeout 20 "$py" -m fusedopt info 2>&1; } > "$out/info.txt" || status=1
cat "$out/info.txt"

# The tests that need the device: every rule x dtype x size against the oracle on the GPU,
# streams, DLPack with torch, the arena optimizer and checkpoints, the measured plan,
# 16-bit storage, fusedopt.torch on CUDA tensors; then the CuPy path of the optimizers.
timeout 90 "$py" -m pytest -q -p no:cacheprovider tests/test_gpu.py \
  tests/test_gpu_torch.py tests/test_gpu_precision.py tests/test_gpu_measured_plan.py \
  tests/test_gpu_nccl.py tests/test_dispatch.py > "$out/pytest.txt" 2>&1 || status=1
tail -n 8 "$out/pytest.txt"

# Adam over GPT-2 small's 148 tensors: arena, list, fusedopt.torch, torch fused.
timeout 40 "$py" -m fusedopt bench --backend cupy --model --json --repeats 10 \
  > "$out/gpu_model.json" 2>> "$out/gpu_bench.err" || status=1

# One 4096-element fo.<rule>_ against its RawKernel launched directly (host time per call).
timeout 10 "$py" -m fusedopt bench --per-call --backend cupy --json --seconds 0.2 \
  > "$out/gpu_per_call.json" 2>> "$out/gpu_bench.err" || status=1

timeout 60 "$py" bench/gpu_bench.py --out "$out" --sizes 24,28 --repeats 10 --precision \
  > "$out/gpu_bench.txt" 2>> "$out/gpu_bench.err" || status=1
tail -n 3 "$out/gpu_bench.err"
cat "$out/gpu_bench.txt"
timeout 5 "$py" -c "import json,sys; from fusedopt.bench_gpu import model_table; \
print(model_table(json.load(open(sys.argv[1]))['model']))" "$out/gpu_model.json" || status=1
exit $status
