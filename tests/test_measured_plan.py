"""``measure_batch_size``: a measured plan for any trainer's step, checked against hand-derived
memory counts and against a real training loop measured independently."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fusedopt as fo
from fusedopt.train import measured_plan

N_X = 50  # features


def _data(m: int, rows: bool = False):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, N_X) if rows else (N_X, m), dtype=np.float32)
    return X, rng.integers(0, 10, m)


def _doubling_step(X_t, Y_t=None) -> None:
    """Holds the batch and one product of its size: 2 * X_t.nbytes at the peak."""
    float(np.sum(X_t * 2.0))


def test_a_hand_counted_step_gives_the_hand_counted_line():
    # peak(b): the batch, its product (4 N_X b each) and the labels (8 b); while the
    # next batch is gathered: two batches (8 N_X b + 16 b). The larger is the second.
    X, y = _data(4000)
    per_sample = 2 * (4 * N_X + 8)
    plan = fo.measure_batch_size(_doubling_step, X, y, memory_limit=per_sample * 1000 + 4096)
    assert plan.device == "numpy" and plan.accounting == "tracemalloc"
    assert plan.bytes_per_sample == pytest.approx(per_sample, rel=0.02)  # + array headers
    assert abs(plan.batch_size - 1000) <= 20
    assert plan.fits and plan.confirmed_peak <= plan.usable_bytes
    assert abs(plan.extrapolation_error) < 0.01
    assert "batch size" in plan.table()


def test_rows_and_no_targets():
    X, _ = _data(3000, rows=True)
    plan = fo.measure_batch_size(_doubling_step, X, sample_axis=0,
                                 memory_limit=2 * 4 * N_X * 600)
    assert plan.bytes_per_sample == pytest.approx(8 * N_X, rel=0.02)
    assert abs(plan.batch_size - 600) <= 15 and plan.fits


def _kinked_step(knee: int, per_sample: int):
    """A step whose memory does not grow until ``knee`` samples, then grows steeply: the
    line through small sizes is far too shallow."""
    def step(X_t, Y_t):
        b = X_t.shape[1]
        scratch = np.ones(max(b - knee, 0) * per_sample, np.uint8)
        float(scratch.sum() + X_t[0, 0])
    return step


def test_a_step_steeper_beyond_a_knee_is_probed_and_confirmed_within_the_limit():
    X, y = _data(20000)
    knee, steep = 500, 4000
    batch = 4 * N_X + 8
    limit = 40_000_000
    # the exact peak: the two batches at most (small b), else the batch and the scratch
    def peak(b):
        return max(2 * batch * b, batch * b + max(b - knee, 0) * steep)
    expected = max(b for b in range(1, 20000, 1) if peak(b) <= limit)
    plan = fo.measure_batch_size(_kinked_step(knee, steep), X, y, memory_limit=limit)
    assert plan.fits and plan.confirmed_peak <= limit
    assert expected - 30 <= plan.batch_size <= expected
    assert len(plan.measured) > 2  # probed beyond the first two sizes


def test_an_out_of_memory_error_caps_the_plan_below_it():
    X, y = _data(20000)

    def step(X_t, Y_t):
        if X_t.shape[1] > 3000:
            raise MemoryError("simulated: no room for this batch")
        _doubling_step(X_t)

    plan = fo.measure_batch_size(step, X, y, memory_limit=10**9)
    assert plan.fits and plan.batch_size <= 3000
    assert "ran out of memory" in plan.reason


def test_not_even_one_sample():
    X, y = _data(500)
    plan = fo.measure_batch_size(_doubling_step, X, y, memory_limit=100)
    assert plan.batch_size == 0 and not plan.fits and "not even one sample" in plan.reason


def test_capped_by_the_samples_and_max_batch_size():
    X, y = _data(300)
    assert fo.measure_batch_size(_doubling_step, X, y).batch_size == 300
    assert fo.measure_batch_size(_doubling_step, X, y, max_batch_size=100).batch_size == 100


def test_without_confirmation_nothing_is_claimed():
    X, y = _data(2000)
    plan = fo.measure_batch_size(_doubling_step, X, y, memory_limit=10**6, confirm=False)
    assert plan.confirmed_peak is None and plan.extrapolation_error is None
    assert all(b < plan.batch_size for b, _ in plan.measured)


def test_the_plan_of_an_mlp_trainer_holds_in_its_real_training_loop():
    """The plan made with a few steps of a fresh model is what two epochs of the library's
    loop on another fresh model peak at, measured independently by tracemalloc."""
    m, layers, limit = 6000, [N_X, 256, 128, 10], 8_000_000
    X, labels = _data(m)
    Y = fo.one_hot(labels, 10).astype(np.float32)
    warm = fo.MLP(layers)  # compiles the kernels outside both measurements
    warm.train_step(X[:, :4].copy(), Y[:, :4].copy(), fo.Adam(warm.arena))

    model = fo.MLP(layers, seed=1)
    opt = fo.Adam(model.arena, lr=1e-3)
    plan = fo.measure_batch_size(lambda X_t, Y_t: model.train_step(X_t, Y_t, opt), X, Y,
                                 memory_limit=limit)
    assert plan.fits and 500 < plan.batch_size < m

    model = fo.MLP(layers, seed=1)
    opt = fo.Adam(model.arena, lr=1e-3)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(2):
            for X_t, Y_t in fo.minibatches(X, Y, plan.batch_size, seed=0):
                model.train_step(X_t, Y_t, opt)
        real = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert 0.95 <= real / plan.confirmed_peak <= 1.02, (real, plan.table())
    assert real <= limit * 1.01


@pytest.mark.parametrize("bad, error, words", [
    (dict(step=None), TypeError, "step must be callable"),
    (dict(X=[[1.0, 2.0]]), TypeError, "X must be a NumPy, CuPy or torch array"),
    (dict(Y=np.zeros(7)), ValueError, "same number of samples"),
    (dict(sizes=(64, 8)), ValueError, "second must be larger"),
    (dict(sizes=(8, 10**6)), ValueError, "at most the 400 samples"),
    (dict(sizes=8), TypeError, "two batch sizes"),
    (dict(sizes=(0, 8)), ValueError, "sizes[0]"),
    (dict(sizes=(2.5, 8)), TypeError, "sizes[0]"),
    (dict(sample_axis=2), ValueError, "sample_axis"),
    (dict(sample_axis=True), TypeError, "sample_axis"),
    (dict(memory_limit=-1), ValueError, "memory_limit"),
    (dict(memory_limit=float("nan")), ValueError, "memory_limit"),
    (dict(max_batch_size=0), ValueError, "max_batch_size"),
    (dict(confirm="yes"), TypeError, "confirm"),
])
def test_bad_arguments_are_named_before_any_step_runs(bad, error, words):
    calls = []
    X, y = _data(400)
    args = dict(step=lambda *batch: calls.append(1), X=X, Y=y) | bad
    step, X, Y = args.pop("step"), args.pop("X"), args.pop("Y")
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        fo.measure_batch_size(step, X, Y, **args)
    assert calls == []


def test_torch_cpu_trainer():
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    torch.manual_seed(0)
    X, Y = torch.randn(20000, 128), torch.randint(0, 10, (20000,))
    model = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(X_t, Y_t):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(X_t), Y_t).backward()
        opt.step()

    limit = 60_000_000
    plan = fo.measure_batch_size(step, X, Y, sample_axis=0, memory_limit=limit)
    assert plan.device == "torch-cpu" and "profiler" in plan.accounting
    assert plan.fits and plan.confirmed_peak <= limit
    # Hand count per sample, at large b: the batch (128 floats and a label), and while the
    # ReLU's backward runs, its saved output, the gradient coming in and the one going out
    # (512 floats each). torch holds all of these at once.
    at_least = (128 * 4 + 8) + 3 * 512 * 4
    assert at_least <= plan.bytes_per_sample <= 1.2 * at_least, plan.table()
    assert limit * 0.5 / plan.bytes_per_sample < plan.batch_size <= limit / at_least


def test_no_extra_is_imported_by_the_module():
    import subprocess
    import sys

    code = ("import sys, fusedopt; fusedopt.measure_batch_size; "
            "print(sorted(m for m in ('torch', 'cupy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    assert measured_plan.GROWTH > 1
