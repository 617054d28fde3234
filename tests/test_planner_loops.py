"""The planner against real training loops, measured with tracemalloc.

The promise: the predicted peak is within 0.95 to 1.10 of the measured peak of
building the model and training it for two epochs with the library's own loop
(``fo.MLP``, ``fo.make_optimizer``, ``fo.minibatches``); for MLPs drawn by
Hypothesis (layers, batch sizes from 1 to 8192, every optimizer, float32 and
float64, softmax or sigmoid outputs) and for the profiler's probes; and the plan
never says "fits" where the measured peak exceeds what it may use.

Below 128 KiB (a toy model on a handful of samples) the promise is absolute, within
12 KiB: Python's own bookkeeping there varies by a few kilobytes with the model and
from call to call (``config.PLANNER_LOOP_OVERHEAD_BYTES``).
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fusedopt as fo
from fusedopt import config
from fusedopt.kernels import optimizer_names
from fusedopt.train import profile as profiler

OPTIMIZERS = sorted(optimizer_names())


def data(n_x: int, n_y: int, m: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_x, m)).astype(dtype)
    if n_y == 1:
        Y = (rng.random((1, m)) > 0.5).astype(dtype)
    else:
        Y = fo.one_hot(rng.integers(0, n_y, m), n_y, dtype=dtype)
    return X, Y


def warm_up(layers, optimizer: str, dtype) -> None:
    """Compile the drivers of this rule and dtype and touch every code path of this model
    once (the JIT's memory, and the objects a first call leaves behind, are not the loop's)."""
    X, Y = data(layers[0], layers[-1], 64, dtype, seed=9)
    for hidden in ([3], [300, 200], layers[1:-1]):  # serial, parallel drivers; this model
        net = fo.MLP([layers[0], *hidden, layers[-1]], dtype=dtype)
        opt = fo.make_optimizer(optimizer, net.arena)
        for X_t, Y_t in fo.minibatches(X[:, :49], Y[:, :49], 16, seed=0):
            net.train_step(X_t, Y_t, opt)  # the last batch is one column: a (n, 1) array
            # is both C- and F-contiguous, and its first use builds code paths of its own


def within_promise(predicted: int, measured: int) -> bool:
    if measured < 128 * 1024:
        return abs(predicted - measured) <= 12 * 1024
    return 0.95 * measured <= predicted <= 1.10 * measured


def measured_loop(layers, b: int, optimizer: str, dtype, X, Y, epochs: int = 2,
                  precision: str = "fp32") -> int:
    """The measured peak of building the model and training it with the library's loop (a
    16-bit ``precision`` through the demo's and profiler's trainer)."""
    from fusedopt.train.precision import Trainer

    gc.collect()
    tracemalloc.start()
    try:
        net = fo.MLP(layers, dtype=dtype)
        trainer = Trainer(net, precision, lambda params, **options: fo.make_optimizer(
            optimizer, params, **options))
        opt = trainer.opt
        for _ in range(epochs):
            for X_t, Y_t in fo.minibatches(X, Y, b, seed=0):
                trainer.train_step(X_t, Y_t)
            opt.next_epoch()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@st.composite
def loops(draw):
    n_x = draw(st.integers(1, 300))
    hidden = draw(st.lists(st.integers(1, 256), min_size=0, max_size=3))
    n_y = draw(st.sampled_from([1, 2, 10]))
    b = draw(st.one_of(st.integers(1, 64), st.sampled_from([128, 512, 2048, 8192])))
    m = draw(st.integers(max(8, min(b, 2048)), 3000)) if b < 2048 else b
    return ([n_x, *hidden, n_y], b, m, draw(st.sampled_from(OPTIMIZERS)),
            draw(st.sampled_from([np.float32, np.float64])))


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(loops())
# no hidden layer, ten classes, one full batch and a remainder: the step's peak is NumPy's
# buffer for the softmax's broadcast (a CI run found it; the held batch hid it elsewhere)
@example(([1, 10], 512, 513, "adam", np.float32))
def test_the_plan_predicts_the_peak_of_a_real_loop(loop):
    layers, b, m, optimizer, dtype = loop
    if m > 1024 and b < 8:  # two epochs of single samples: slow, and not a new case
        m = 1024
    X, Y = data(layers[0], layers[-1], m, dtype)
    warm_up(layers, optimizer, dtype)
    measured = measured_loop(layers, b, optimizer, dtype, X, Y)
    plan = fo.plan_batch_size(X, Y, layer_sizes=layers, optimizer=optimizer, dtype=dtype)
    predicted = plan.peak_bytes_at(min(b, m))
    assert within_promise(predicted, measured), (predicted, measured, loop)


@pytest.mark.parametrize("layers, optimizer, b", [
    ([3072, 1024, 512, 100], "rmsprop", 32), ([784, 2048, 2048, 10], "momentum", 2048),
    ([100, 50, 1], "sgd", 8192), ([784, 512, 256, 10], "adam", 256),
])
def test_the_issue_models_are_predicted_within_the_promise(layers, optimizer, b):
    """The models the adversarial pass measured at 0.68 to 0.82 of their peaks."""
    X, Y = data(layers[0], layers[-1], 8192, np.float32)
    warm_up(layers, optimizer, np.float32)
    measured = measured_loop(layers, b, optimizer, np.float32, X, Y)
    plan = fo.plan_batch_size(X, Y, layer_sizes=layers, optimizer=optimizer)
    assert 0.95 * measured <= plan.peak_bytes_at(b) <= 1.10 * measured


@pytest.mark.parametrize("precision", ["bf16", "bf16-sr", "fp16-master"])
@pytest.mark.parametrize("b", [32, 1024])
def test_16_bit_recipes_are_predicted_within_the_promise(precision, b):
    """Each slot in its dtype, the master copy, and the MLP's float32 working copy."""
    layers = [784, 512, 256, 10]
    X, Y = data(layers[0], layers[-1], 4096, np.float32)
    measured_loop(layers, 8, "adam", np.float32, X[:, :64], Y[:, :64], epochs=1,
                  precision=precision)  # compile outside the measurement
    measured = measured_loop(layers, b, "adam", np.float32, X, Y, precision=precision)
    plan = fo.plan_batch_size(X, Y, layer_sizes=layers, optimizer="adam", precision=precision)
    assert within_promise(plan.peak_bytes_at(b), measured), (plan.peak_bytes_at(b), measured)


def test_a_plan_from_shapes_counts_the_training_set():
    """On the CPU the loop holds the data: a batch that fits beside nothing does not fit beside
    the training set, and the plan says so."""
    from fusedopt.train import memory_model

    m, b, layers = 600_000, 200_000, [784, 256, 10]
    X, Y = ((784, m), np.float32), ((10, m), np.float32)
    dataset = (784 + 10) * m * 4
    without = sum(memory_model.step_peak_bytes(
        n_x=784, n_y=10, m=m, batch_size=b, shapes=memory_model.mlp_shapes(layers),
        layer_sizes=layers).values())
    limit = int((without + dataset // 2) / (1 - config.PLANNER_MARGIN_FRACTION))
    plan = fo.plan_batch_size(X, Y, layer_sizes=layers, memory_limit=limit)
    assert plan.breakdown["the training set X, Y"] == dataset
    assert plan.peak_bytes_at(b) == without + dataset
    assert without <= plan.usable_bytes < without + dataset  # fits only if X is forgotten
    assert plan.max_fitting_batch_size < b and plan.fits


@pytest.mark.parametrize("b", [16, 256, 2048])
def test_fits_is_never_said_of_a_loop_that_exceeds_the_limit(b):
    layers, optimizer = [400, 300, 10], "adam"
    X, Y = data(400, 10, 4096, np.float32)
    warm_up(layers, optimizer, np.float32)
    measured = measured_loop(layers, b, optimizer, np.float32, X, Y, epochs=1)
    dataset = X.nbytes + Y.nbytes
    for limit in (measured + dataset - 1, int((measured + dataset) * 1.2)):
        plan = fo.plan_batch_size(X, Y, layer_sizes=layers, optimizer=optimizer,
                                  memory_limit=limit)
        # memory_limit counts the training set too; the loop fits if its peak and the data do
        truly_fits = measured + dataset <= plan.usable_bytes
        says_fits = plan.peak_bytes_at(b) <= plan.usable_bytes
        assert not says_fits or truly_fits, (b, limit, plan.peak_bytes_at(b), measured)


@pytest.mark.parametrize("layers, m", [([64, 64, 10], 1438), ([20, 5, 2], 3000),
                                       ([300, 200, 10], 4096)])
def test_the_plan_predicts_the_profilers_probes(layers, m):
    X, Y = data(layers[0], layers[-1], m, np.float32)
    plan = fo.plan_batch_size(X, Y, layer_sizes=layers,
                              extra_bytes=config.PROFILER_RECORD_BYTES)

    def factory():
        return profiler.MLPTrainer(layers, lr=1e-2)

    for b in (1, 32, 512, m):
        # a throwaway probe at the same size first: what the first probe of a size
        # allocates once and keeps (lazily built caches; Numba's specialisation for a
        # (n, 1) batch, which is both C- and F-contiguous) is not the loop's memory, and
        # earlier tests in the same process may have built it already
        profiler._probe(factory, X, Y, X, Y, b, 0.05, 0, None, 0.05)
        gc.collect()
        tracemalloc.start()
        try:
            profiler._probe(factory, X, Y, X, Y, b, 0.2, 0, None, 0.05)
            measured = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert within_promise(plan.peak_bytes_at(b), measured), (b, plan.peak_bytes_at(b),
                                                                  measured)


def test_the_profilers_recommendation_is_stable_on_the_digits():
    """Five runs, one answer: sizes within the measurement's resolution of the fastest tie,
    and the largest of them wins."""
    from fusedopt.train.datasets import load_digits

    digits = load_digits()
    answers = []
    for _ in range(5):
        profile = fo.profile_batch_sizes(digits.X_train, digits.Y_train, seconds=1.0,
                                         progress=False, noise_scale=False)
        answers.append(profile.recommended)
        steps = {p.batch_size: p.steps_to_target for p in profile.probes}
    assert len(set(answers)) == 1, answers
    assert all(p.repeats == config.PROFILER_REPEATS for p in profile.probes)
    again = fo.profile_batch_sizes(digits.X_train, digits.Y_train, seconds=1.0,
                                   progress=False, noise_scale=False, repeats=1)
    assert {p.batch_size: p.steps_to_target for p in again.probes} == steps  # deterministic
