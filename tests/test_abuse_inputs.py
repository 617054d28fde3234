"""Promises kept under hostile inputs: named errors, nothing changed, finite stays finite."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from optim_helpers import gradients, initial, train

import fusedopt as fo


# ------------------------------------------------- the global norm cannot overflow
def test_clipping_works_for_huge_finite_float64_gradients():
    params = [np.zeros(3)]
    opt = fo.SGD(params, lr=1.0, max_grad_norm=1.0, nonfinite="raise")
    assert opt.step([np.full(3, 1e200)])
    assert opt.last_grad_norm == pytest.approx(np.sqrt(3) * 1e200, rel=1e-15)
    np.testing.assert_allclose(params[0], -1 / np.sqrt(3), rtol=1e-12)  # clipped to norm 1


@pytest.mark.parametrize("values", [[1e300, -1e300, 1.0], [1e-300, 2e-300, 0.0],
                                    [1e200, 1e-200, 3.0], [5e-324, 1e-310]])
def test_the_norm_matches_an_exact_rescaled_norm(values):
    x = np.array(values)
    scale = np.max(np.abs(x))
    exact = scale * np.sqrt(np.sum((x / scale) ** 2))
    for arena in (False, True):
        params = fo.ParamArena([np.zeros_like(x)]) if arena else [np.zeros_like(x)]
        opt = fo.SGD(params, lr=0.0, nonfinite="raise")
        train(opt, params if arena else None, [[x]])
        assert opt.last_grad_norm == pytest.approx(exact, rel=1e-14)


def test_a_finite_huge_step_is_not_skipped_and_a_nan_is_named():
    opt = fo.SGD([np.zeros(2)], lr=0.0, nonfinite="skip")
    assert opt.step([np.array([1e300, 1e300])]) is True
    # finite gradients whose norm is beyond float64: still finite, still clipped
    clipped = [np.zeros(2)]
    opt = fo.SGD(clipped, lr=1.0, max_grad_norm=1.0, nonfinite="raise")
    assert opt.step([np.array([1.7e308, 1.7e308])]) is True
    assert opt.last_grad_norm == np.inf
    np.testing.assert_allclose(clipped[0], -1 / np.sqrt(2), rtol=1e-12)
    raising = fo.SGD([np.zeros(2), np.zeros(2)], lr=0.1, nonfinite="raise")
    with pytest.raises(FloatingPointError, match=r"tensor 1 \(2,\)"):
        raising.step([np.array([1e300, 1e300]), np.array([np.nan, 1e300])])


# ----------------------------------------------- everything checked before any write
def test_a_parameter_made_read_only_after_construction_changes_nothing():
    params = initial()
    opt = fo.Adam(params, lr=0.1)
    params[3].flags.writeable = False
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match="parameter 3 has become read-only"):
        opt.step(gradients(1)[0])
    for b, p in zip(before, params, strict=True):
        np.testing.assert_array_equal(b, p)
    assert opt.step_count == 0 and opt.groups[0].state is None


def test_an_arena_buffer_made_read_only_is_refused():
    arena = fo.ParamArena(initial())
    opt = fo.SGD(arena, lr=0.1)
    (buffer, _), = arena.buffers.values()
    buffer.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.step()


def test_gradients_aliasing_other_parameters_or_state_are_refused():
    a, b = np.ones(3), np.full(3, 2.0)
    opt = fo.SGD([a, b], lr=0.1)
    with pytest.raises(ValueError, match=r"grads\[0\] shares memory with parameter 1"):
        opt.step([b, a])
    np.testing.assert_array_equal(a, 1.0)
    adam = fo.Adam([np.ones(4), np.ones(4)], lr=0.1)
    adam.step([np.ones(4), np.ones(4)])
    with pytest.raises(ValueError, match=r"grads\[1\] shares memory with exp_avg_sq of "
                                         r"parameter 0"):
        adam.step([np.ones(4), adam.groups[0].state[0][1]])


# ------------------------------------- values the arrays' dtype cannot hold are refused
@pytest.mark.parametrize("call, word", [
    (lambda a: fo.sgd_(a[0], a[1], lr=1e39), r"lr=1e\+39 cannot be represented in float32"),
    (lambda a: fo.adam_(*a, step=1, lr=1e39), r"lr=1e\+39"),
    (lambda a: fo.adamw_(*a, step=1, lr=1e30, weight_decay=1e30),
     r"lr \* weight_decay = 1.*is above 1"),
    (lambda a: fo.lion_(*a[:3], lr=1e20, weight_decay=1e20), r"lr \* weight_decay"),
    (lambda a: fo.adam_(*a, step=1, lr=10**400), "beyond float64's range"),
    (lambda a: fo.adam_(*a, step=10**400), "at most 2\\*\\*53"),
])
def test_hyperparameters_that_would_overflow_the_arrays_are_refused(call, word):
    arrays = [np.ones(4, np.float32), np.ones(4, np.float32), np.zeros(4, np.float32),
              np.zeros(4, np.float32)]
    with pytest.raises(ValueError, match=word):
        call(arrays)
    assert all(np.isfinite(a).all() for a in arrays) and (arrays[0] == 1).all()


def test_an_optimizer_step_with_an_overflowing_rate_changes_nothing():
    params = [np.ones(3, np.float32)]
    opt = fo.Adam(params, lr=1e39)
    with pytest.raises(ValueError, match=r"Adam.step: lr=1e\+39"):
        opt.step([np.ones(3, np.float32)])
    assert opt.step_count == 0 and (params[0] == 1).all()


@pytest.mark.parametrize("change, word", [
    (lambda d: d["groups"][0]["state"]["exp_avg_sq"][0].__setitem__((0, 0), -1.0),
     r"exp_avg_sq\[0\] has negative values"),
    (lambda d: d.update(step=10**400), "step=.*digits.* is invalid"),
    (lambda d: d.update(epoch=2**60), "epoch"),
])
def test_a_state_that_would_break_later_steps_is_refused(change, word):
    source = fo.Adam(initial(), lr=0.01)
    train(source, None, gradients(2))
    state = source.state_dict()
    change(state)
    target = fo.Adam(initial(seed=3), lr=0.01)
    with pytest.raises(ValueError, match=word):
        target.load_state_dict(state)
    assert target.step_count == 0


def test_a_param_arena_refuses_values_its_dtype_cannot_hold():
    with pytest.raises(ValueError, match=r"arrays_or_shapes\[1\] holds finite values beyond "
                                         "float32"):
        fo.ParamArena([np.ones(2), np.array([1e300])], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = fo.ParamArena([np.array([np.inf, 1.0])], dtype=np.float32)  # inf stays inf
    assert np.isinf(kept.params[0][0])


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (True, TypeError), (1.5, TypeError)])
def test_minibatch_seeds_are_checked_by_name(seed, error):
    with pytest.raises(error, match="seed"):
        fo.minibatches(np.ones((2, 8)), np.ones((1, 8)), 4, seed=seed)


# ------------------------------------------------------------------ the planner's integers
def test_the_planner_counts_bytes_without_wrapping_around():
    plan = fo.plan_batch_size(((1_000_000, 40_000_000_000_000), np.float32),
                              ((1, 40_000_000_000_000), np.float32),
                              layer_sizes=[1_000_000, 1], memory_limit=2 * 10**19)
    assert not plan.data_fits_on_device
    assert plan.peak_bytes > 8 * 40_000_000_000_000  # the permutation alone: 320 TB


@pytest.mark.parametrize("kwargs, word", [
    (dict(activation_bytes_per_sample=10, param_shapes=[(3, -2)]), r"param_shapes\[0\]\[1\]"),
    (dict(layer_sizes=[4, 10**300, 1]), r"layer_sizes\[1\]"),
    (dict(layer_sizes=[4, 2.5, 1]), r"layer_sizes\[1\]"),
])
def test_the_planner_refuses_impossible_sizes_by_name(kwargs, word):
    with pytest.raises((ValueError, TypeError), match=word):
        fo.plan_batch_size(((4, 100), np.float32), ((1, 100), np.float32), **kwargs)
