"""What a step keeps from the last one (the launch layout, the checked gradients, the
table of addresses, the thread split) must never change what it computes.

The oracle is a fresh optimizer run on fresh copies, whose steps share nothing kept
with the optimizer under test, and the float64 NumPy reference for the values.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fusedopt as fo
from fusedopt import config
from fusedopt.backends import multi_tensor
from fusedopt.kernels import reference

SHAPES = [(3, 5), (7,), (1,), (40, 3), (2, 2, 2)]


def model(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def fresh_run(grad_sets, **kwargs):
    """The oracle: a new optimizer over new parameters, handed copies of the gradients."""
    params = model()
    opt = fo.Adam(params, lr=0.01, **kwargs)
    for grads in grad_sets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            opt.step([g.copy() for g in grads])
    return params


def test_the_same_gradient_arrays_rewritten_in_place_are_read_each_step():
    params = model()
    opt = fo.Adam(params, lr=0.01)
    buffers = [np.zeros(s, np.float32) for s in SHAPES]  # a loop's out= buffers
    rng = np.random.default_rng(5)
    sets = []
    for _ in range(4):
        for b in buffers:
            b[...] = rng.standard_normal(b.shape)
        sets.append([b.copy() for b in buffers])
        opt.step(buffers)
    for got, want in zip(params, fresh_run(sets), strict=True):
        np.testing.assert_array_equal(got, want)


def test_adam_over_kept_gradients_matches_the_float64_reference():
    params = model()
    start = [p.astype(np.float64) for p in params]
    grads = [np.full(s, 0.5, np.float32) for s in SHAPES]
    opt = fo.Adam(params, lr=0.01)
    m = [np.zeros_like(p) for p in start]
    v = [np.zeros_like(p) for p in start]
    for t in range(1, 4):
        opt.step(grads)
        for k in range(len(start)):
            start[k], m[k], v[k] = reference.adam(start[k], grads[k].astype(np.float64),
                                                  m[k], v[k], lr=0.01, step=t)
    for got, want in zip(params, start, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_a_skipped_step_then_the_same_gradients_fixed_in_place_uses_them():
    """A skipped step remembers its gradients without launching; the next step over the
    same arrays must use their addresses, not those of the step before."""
    params = model()
    opt = fo.Adam(params, lr=0.01, nonfinite="skip")
    first = [np.full(s, 0.25, np.float32) for s in SHAPES]
    second = [np.full(s, -0.5, np.float32) for s in SHAPES]
    opt.step(first)
    second[1][0] = np.nan
    with pytest.warns(RuntimeWarning, match="skipped"):
        assert opt.step(second) is False
    second[1][0] = -0.5
    opt.step(second)
    for got, want in zip(params, fresh_run([first, second]), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_parameter_made_read_only_between_steps_is_still_refused():
    params = model()
    grads = [np.ones(s, np.float32) for s in SHAPES]
    opt = fo.Adam(params, lr=0.01)
    opt.step(grads)
    params[2].flags.writeable = False
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match="read-only"):
        opt.step(grads)
    for got, want in zip(params, before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_new_gradient_aliasing_a_parameter_is_refused_after_kept_steps():
    params = model()
    grads = [np.ones(s, np.float32) for s in SHAPES]
    opt = fo.Adam(params, lr=0.01)
    opt.step(grads)
    opt.step(grads)
    bad = list(grads)
    bad[3] = params[3]  # the parameter itself as its gradient
    with pytest.raises(ValueError, match="shares memory"):
        opt.step(bad)
    bad[3] = opt.groups[0].state[0][0].reshape(SHAPES[0])[:, :3]  # wrong shape
    with pytest.raises(ValueError):
        opt.step(bad)


def test_the_optimizer_keeps_no_gradient_alive():
    import gc
    import weakref

    params = model()
    opt = fo.Adam(params, lr=0.01)
    grads = [np.ones(s, np.float32) for s in SHAPES]
    opt.step(grads)
    refs = [weakref.ref(g) for g in grads]
    del grads
    gc.collect()
    assert all(r() is None for r in refs)


def test_a_state_reload_or_a_rule_switch_rebuilds_the_layout(tmp_path):
    params = model()
    grads = [np.full(s, 0.1, np.float32) for s in SHAPES]
    opt = fo.Adam(params, lr=0.01)
    opt.step(grads)
    path = tmp_path / "adam.npz"
    fo.save(path, opt)
    opt.step(grads)
    opt.step(grads)
    fo.load(path, opt)  # back to the state after one step, in the same arrays
    opt.step(grads)
    again = model()
    other = fo.Adam(again, lr=0.01)
    other.step(grads)
    other.step(grads)
    for got, want in zip(params, again, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("sizes", [[5, 0, 200_000, 3, 70_000, 1], [1, 1, 1], [0, 0, 9],
                                   [1 << 18]])
def test_the_thread_split_covers_every_element_once_in_order(threads, sizes):
    chunks = multi_tensor._chunks(sizes, threads)
    total = sum(sizes)
    pieces = [tuple(c) for c in chunks if c[2] > c[1]]
    seen = {t: np.zeros(n, int) for t, n in enumerate(sizes)}
    for t, lo, hi in pieces:
        assert hi - lo <= config.MULTI_TENSOR_CHUNK
        seen[t][lo:hi] += 1
    assert all((s == 1).all() for s in seen.values())
    # in model order, and the threads' equal contiguous blocks of the table each hold
    # an equal share (to one element)
    starts = np.cumsum([0, *sizes])
    firsts = [starts[t] + lo for t, lo, _ in pieces]
    assert firsts == sorted(firsts)
    if total > config.MULTI_TENSOR_CHUNK:
        per_thread = (chunks[:, 2] - chunks[:, 1]).reshape(threads, -1).sum(axis=1)
        assert per_thread.max() - per_thread.min() <= 1
        assert per_thread.sum() == total
