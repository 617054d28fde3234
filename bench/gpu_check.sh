#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU whose image already holds cupy, numba,
# torch, pytest and pytest-benchmark. Installs nothing; runs from the working tree.
#
#   bash bench/gpu_check.sh OUT_DIR      (default: $OUT, else ./gpu_out)
#
# Writes into OUT_DIR: nvidia-smi.txt, info.txt, pytest.txt, pytest.xml, gpu_bench.json,
# gpu_bench.txt; prints the benchmark table last. Budget: well under 5 minutes.
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_out}}
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
status=0

nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
python -m fusedopt info > "$out/info.txt" 2>&1 || status=1
cat "$out/info.txt"

# Every test that can run there (the backend fixture adds "cupy" when a GPU is present;
# property tests need Hypothesis and are skipped if the image lacks it).
timeout 170 python -m pytest tests -q -p no:cacheprovider --junitxml="$out/pytest.xml" \
  > "$out/pytest.txt" 2>&1 || status=1
tail -n 15 "$out/pytest.txt"

timeout 110 python bench/gpu_bench.py --out "$out" > "$out/gpu_bench.txt" 2> "$out/gpu_bench.err" \
  || status=1
tail -n 3 "$out/gpu_bench.err"
cat "$out/gpu_bench.txt"
exit $status
