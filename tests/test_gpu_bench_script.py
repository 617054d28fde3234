"""bench/gpu_bench.py runs end to end on the host-emulated CuPy (so a GPU session finds
no Python error in it); the figures it prints here mean nothing."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


SMALL_MODEL = [(64, 8), (8,), (8, 24), (24,), (3,)]


def test_gpu_bench_runs_on_the_host_emulation(host_cupy, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setitem(sys.modules, "torch", None)  # the GPU image's torch is not needed here
    from fusedopt import bench_gpu

    monkeypatch.setattr(bench_gpu, "gpt2_small_shapes", lambda: SMALL_MODEL)
    import gpu_bench

    assert gpu_bench.main(["--out", str(tmp_path), "--sizes", "8,10", "--repeats", "2",
                           "--rules", "adam,sgd"]) == 0
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    impls = {(r["rule"], r["n"], r["impl"]) for r in result["results"]}
    for rule in ("adam", "sgd"):
        for n in (256, 1024):
            for impl in ("fusedopt", "fusedopt_scalar", "cupy_unfused", "copy"):
                assert (rule, n, impl) in impls
    # (the emulation has no streams to capture a graph on: no graph row)
    assert {r["impl"] for r in result["model"]} == {"arena", "arena_clip_nonfinite",
                                                    "arena_clip_capturable", "list"}
    assert result["model"][0]["tensors"] == len(SMALL_MODEL)
    assert f"Adam over {len(SMALL_MODEL)} tensors" in capsys.readouterr().out


def test_the_installed_command_runs_the_gpu_benchmark(host_cupy, monkeypatch, capsys):
    """``fusedopt bench --backend cupy --model --json``: the package's own GPU benchmark."""
    monkeypatch.setitem(sys.modules, "torch", None)
    from fusedopt import bench_gpu, cli

    monkeypatch.setattr(bench_gpu, "gpt2_small_shapes", lambda: SMALL_MODEL)
    assert cli.main(["bench", "--backend", "cupy", "--model", "--json", "--repeats", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["impl"] for r in result["model"]] == ["arena", "arena_clip_nonfinite",
                                                    "arena_clip_capturable", "list"]
    assert result["results"] == []


def test_gpt2_small_is_148_tensors_of_124m_parameters():
    from fusedopt.bench_gpu import gpt2_small_shapes

    shapes = gpt2_small_shapes()
    total = sum(int(__import__("math").prod(s)) for s in shapes)
    assert len(shapes) == 148 and total == 124_439_808  # Radford et al. 2019, GPT-2 small


def test_without_a_gpu_the_command_says_so(capsys):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "fusedopt", "bench", "--backend", "cupy",
                           "--model"], capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        return  # a machine with a GPU ran it
    assert done.returncode == 2 and "needs CuPy and a CUDA GPU" in done.stderr


def test_the_gpu_check_script_fits_its_budget():
    """bench/gpu_check.sh: the image's python3 (or $PYTHON), a timeout on every step, the
    timeouts adding up to under 4 minutes, at most 7 files written."""
    import re

    script = (ROOT / "bench" / "gpu_check.sh").read_text()
    assert 'py=${PYTHON:-python3}' in script
    lines = [line.strip() for line in script.splitlines()
             if '"$py"' in line and not line.strip().startswith("#")]
    assert lines and all(line.startswith("timeout ") or " timeout " in line for line in lines)
    budget = sum(int(t) for t in re.findall(r"timeout (\d+)", script))
    assert budget < 240, budget
    files = set(re.findall(r'\$out/([\w.]+)', script))
    assert len(files) <= 7, files


def test_per_call_benchmark_on_the_cpu_and_the_host_emulated_gpu(host_cupy, capsys):
    """``fusedopt bench --per-call``: a whole call against its kernel called directly; the
    call cannot be cheaper than the kernel it launches (same rounds, medians)."""
    from fusedopt import cli

    for backend in ("numba", "cupy"):
        assert cli.main(["bench", "--per-call", "--backend", backend, "--rules", "adam",
                         "--repeats", "3", "--seconds", "0", "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)["per_call"]
        assert row["backend"] == backend and row["n"] == 4096
        assert row["call_us"] > 0 and row["kernel_us"] > 0
        assert row["x_kernel"] == pytest.approx(row["call_us"] / row["kernel_us"])
