"""The ``fusedopt`` command, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest


def fusedopt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusedopt", *args], capture_output=True,
                          text=True, timeout=600)


def test_help_lists_the_commands():
    out = fusedopt("--help")
    assert out.returncode == 0
    for command in ("info", "bench"):
        assert command in out.stdout


def test_console_script_is_installed():
    if shutil.which("fusedopt") is None:
        pytest.skip("the package is not pip-installed here (run from a source tree)")
    out = subprocess.run(["fusedopt", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("fusedopt ")


def test_info_reports_backends_threads_and_memory():
    out = fusedopt("info")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "numba  available" in text and "numpy  available" in text
    assert "cupy" in text  # available, or why not
    assert "numba threads:" in text and "cpu memory:" in text and "gpu" in text


def test_bench_json_reports_ratios():
    out = fusedopt("bench", "--rules", "adam,sgd", "--sizes", "4096", "--impls",
                   "fusedopt,floor,reference", "--repeats", "3", "--seconds", "0", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["results"]
    assert {(r["rule"], r["impl"]) for r in rows} == {
        (rule, impl) for rule in ("adam", "sgd") for impl in ("fusedopt", "floor", "reference")}
    for row in rows:
        assert row["median_s"] > 0 and row["n"] == 4096
        assert row["bytes_moved"] == {"adam": 28, "sgd": 12}[row["rule"]] * 4096
        if row["impl"] == "floor":
            assert row["x_floor"] == 1.0
        if row["impl"] == "reference":
            assert row["speedup_vs_reference"] == 1.0


def test_bench_table():
    out = fusedopt("bench", "--rules", "momentum", "--sizes", "1024", "--impls",
                   "fusedopt,reference", "--repeats", "2", "--seconds", "0")
    assert out.returncode == 0, out.stderr
    assert "x faster than ref" in out.stdout and "momentum" in out.stdout


@pytest.mark.parametrize("args, word", [
    (("bench", "--rules", "no_such_rule"), "--rules"),
    (("bench", "--impls", "jax"), "--impls"),
    (("bench", "--sizes", "0"), "--sizes"),
    (("frobnicate",), "invalid choice"),
])
def test_bad_flags_exit_2_with_one_clear_line(args, word):
    out = fusedopt(*args)
    assert out.returncode == 2
    assert word in out.stderr


def test_bench_model_json():
    out = fusedopt("bench", "--model", "--repeats", "2", "--seconds", "0", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["impl"]: r for r in json.loads(out.stdout)["model"]}
    assert {"arena", "list", "arena_clip_nonfinite", "floor"} <= set(rows)
    assert rows["arena"]["tensors"] == 157 and rows["arena"]["elements"] == 10_760_192
    assert rows["arena"]["x_arena"] == 1.0


def test_plan_prints_the_plan_and_its_breakdown():
    out = fusedopt("plan", "--m", "1000000", "--n-x", "784", "--layers", "784,256,10",
                   "--optimizer", "adam", "--memory", "8GiB")
    assert out.returncode == 0, out.stderr
    assert "batch size: 512" in out.stdout and "optimizer state (2 slots)" in out.stdout
    assert "8.00 GiB available" in out.stdout and "the training set X, Y" in out.stdout
    # 5 million samples of 784 floats do not fit in 8 GiB beside anything: the plan says so
    big = fusedopt("plan", "--m", "5000000", "--n-x", "784", "--layers", "784,256,10",
                   "--memory", "8GiB")
    assert big.returncode == 1 and "training set" in big.stdout


def test_plan_that_does_not_fit_exits_1():
    out = fusedopt("plan", "--m", "50000", "--layers", "784,8192,8192,10", "--memory", "600MiB")
    assert out.returncode == 1 and "nothing fits" in out.stdout


def test_plan_json():
    out = fusedopt("plan", "--m", "1000", "--layers", "20,8,2", "--json")
    assert out.returncode == 0
    assert json.loads(out.stdout)["batch_size"] == 1000


@pytest.mark.parametrize("args, word", [
    (("plan", "--m", "10", "--layers", "784"), "--layers"),
    (("plan", "--m", "10", "--layers", "4,2", "--memory", "8XB"), "--memory"),
    (("plan", "--m", "10", "--layers", "4,2", "--n-x", "5"), "--n-x"),
    (("profile", "--sizes", "0"), "--sizes"),
    (("plan", "--m", "0", "--layers", "4,2"), "--m"),
    (("plan", "--m", "10", "--layers", "4,2", "--memory", "1e400"), "--memory"),
    (("plan", "--m", "10", "--layers", "4,2", "--memory", "0.5"), "--memory"),
    (("profile", "--seconds", "0"), "--seconds"),
])
def test_plan_and_profile_bad_flags_exit_2(args, word):
    out = fusedopt(*args)
    assert out.returncode == 2 and word in out.stderr


def test_profile_on_the_digits_writes_table_and_plots(tmp_path):
    pytest.importorskip("sklearn", reason="the digits come with scikit-learn: "
                                          "pip install 'fusedopt[demo]'")
    out = fusedopt("profile", "--sizes", "64,256", "--seconds", "0.2", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "recommended:" in out.stdout and "B_simple" in out.stdout
    assert {"profile.json", "throughput.png", "cost_vs_time.png"} <= {
        p.name for p in tmp_path.iterdir()}
