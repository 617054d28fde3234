"""The main job (``fusedopt demo``) and the lecture's examples, run as a user runs them."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("sklearn", reason="the demo's data comes with scikit-learn: "
                                      "pip install 'fusedopt[demo]'")
pytest.importorskip("matplotlib", reason="the plots need matplotlib: pip install 'fusedopt[demo]'")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_demo_reaches_the_stated_accuracy_with_its_defaults(tmp_path):
    """The README promises at least 0.95 held-out accuracy on the digits with the defaults."""
    from fusedopt.train import demo

    result = demo.run(out=str(tmp_path), progress=False, log=lambda *_: None)
    assert result.test_accuracy >= 0.95
    assert result.steps == 30 * 23  # 30 epochs of ceil(1438 / 64) mini-batches
    assert result.lrs[0] > result.lrs[-1]  # the learning rate decayed
    for path in result.plots:
        assert pathlib.Path(path).read_bytes()[:8] == PNG


def test_demo_command(tmp_path):
    out = run("-m", "fusedopt", "demo", "--epochs", "3", "--optimizer", "momentum", "--out",
              str(tmp_path / "plots"))
    assert out.returncode == 0, out.stderr
    assert "held-out accuracy" in out.stdout and "plan:" in out.stdout
    assert (tmp_path / "plots" / "cost.png").exists()
    assert (tmp_path / "plots" / "learning_rate.png").exists()


@pytest.mark.parametrize("args, words", [
    (("--optimizer", "no_such_optimizer"), ["--optimizer", "invalid choice"]),
    (("--batch-size", "0"), ["--batch-size", "at least 1"]),
    (("--epochs", "-3"), ["--epochs"]),
    (("--backend", "cupy"), ["backend 'cupy' is not available"]),
])
def test_demo_bad_flags_give_one_line_and_exit_2(args, words):
    from conftest import HAS_GPU

    if "cupy" in args and HAS_GPU:
        pytest.skip("cupy is available on this machine")
    out = run("-m", "fusedopt", "demo", *args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("script, args", [
    ("ewa_temperatures.py", ["--days", "90"]),
    ("optimizer_paths.py", ["--steps", "10"]),
    ("batch_vs_minibatch.py", ["--seconds", "0.1"]),
    ("lr_decay.py", ["--epochs", "3"]),
])
def test_example_runs_small_and_writes_its_png(tmp_path, script, args):
    if script == "ewa_temperatures.py":
        pytest.importorskip("vega_datasets", reason="pip install 'fusedopt[demo]'")
    out = run(str(ROOT / "examples" / script), "--out", str(tmp_path), *args)
    assert out.returncode == 0, out.stderr
    png = pathlib.Path(out.stdout.strip().splitlines()[-1])
    assert png.parent == tmp_path and png.read_bytes()[:8] == PNG


def test_ewa_example_uses_the_fused_kernels_and_bias_correction():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import numpy as np
        from ewa_temperatures import averages
    finally:
        sys.path.pop(0)
    temps = np.full(30, 20.0)
    np.testing.assert_allclose(averages(temps, 0.98, True), 20.0)
    raw = averages(temps, 0.98, False)
    np.testing.assert_allclose(raw, 20.0 * (1 - 0.98 ** np.arange(1, 31)))


def test_optimizer_paths_reach_the_minimum_in_the_expected_order():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import numpy as np
        from optimizer_paths import CURVATURE, path
    finally:
        sys.path.pop(0)

    def final_cost(rule):
        return 0.5 * float(CURVATURE @ path(rule, 40)[-1] ** 2)

    costs = {rule: final_cost(rule) for rule in ("gradient descent", "momentum", "rmsprop",
                                                  "adam")}
    assert all(c < 0.5 * float(CURVATURE @ np.array([-9.0, 1.5]) ** 2) for c in costs.values())
    assert costs["adam"] < costs["gradient descent"]
    # Gradient descent zig-zags across the steep direction: b changes sign step after step.
    b = path("gradient descent", 10)[:, 1]
    assert (np.sign(b[1:]) != np.sign(b[:-1])).sum() >= 8


def test_demo_on_the_cupy_backend(host_cupy, tmp_path):
    """``fusedopt demo --backend cupy``'s code path, on the host-emulated CuPy."""
    from fusedopt.train import demo

    result = demo.run(backend="cupy", epochs=3, out=str(tmp_path), progress=False,
                      log=lambda *_: None)
    assert result.test_accuracy > 0.8 and result.steps == 3 * 23
