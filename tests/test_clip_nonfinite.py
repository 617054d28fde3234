"""Clipping by global norm and non-finite steps: one extra read, inside the fused step."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from optim_helpers import gradients, initial

import fusedopt as fo


def test_clipping_by_global_norm_scales_inside_the_fused_step():
    grads = gradients(5)
    params = initial()
    opt = fo.Momentum(params, lr=0.1, max_grad_norm=0.5)
    expected = initial()
    velocity = [np.zeros_like(p) for p in expected]
    for g in grads:
        opt.step(g)
        norm = np.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g))
        scale = min(1.0, 0.5 / (norm + 1e-6))
        for p, x, v in zip(expected, g, velocity, strict=True):
            fo.momentum_(p, (x * np.float32(scale)).astype(np.float32), v, lr=0.1)
        assert opt.last_grad_norm == pytest.approx(norm, rel=1e-12)
    for got, want in zip(params, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for g in grads[0]:  # the gradients themselves are not rewritten
        assert np.isfinite(g).all()


@pytest.mark.parametrize("arena", [False, True], ids=["list", "arena"])
def test_nonfinite_step_is_skipped_and_changes_nothing(arena):
    grads = gradients(3)
    grads[1][2][1, 1] = np.inf
    grads[1][4][0] = np.nan
    if arena:
        params = fo.ParamArena(initial())
        opt = fo.Adam(params, lr=0.1, nonfinite="skip")
    else:
        params = initial()
        opt = fo.Adam(params, lr=0.1, nonfinite="skip")
    results = []
    for g in grads:
        if arena:
            for view, value in zip(params.grads, g, strict=True):
                view[...] = value
            before = opt.state_dict()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                results.append(opt.step())
        else:
            before = opt.state_dict()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                results.append(opt.step(g))
        if results[-1] is False:
            after = opt.state_dict()
            assert after["step"] == before["step"] and any("skipped" in str(w.message)
                                                           for w in caught)
            for key in ("params",):
                for x, y in zip(before["groups"][0][key], after["groups"][0][key], strict=True):
                    np.testing.assert_array_equal(x, y)
            for key in before["groups"][0]["state"]:
                for x, y in zip(before["groups"][0]["state"][key],
                                after["groups"][0]["state"][key], strict=True):
                    np.testing.assert_array_equal(x, y)
    assert results == [True, False, True]
    assert opt.skipped_steps == 1 and opt.step_count == 2


def test_nonfinite_raise_names_the_tensor_and_changes_nothing():
    params = initial()
    opt = fo.RMSprop(params, lr=0.1, nonfinite="raise")
    grads = gradients(1)[0]
    grads[3][0] = np.nan
    before = [p.copy() for p in params]
    with pytest.raises(FloatingPointError, match=r"tensor 3 \(1,\)"):
        opt.step(grads)
    for b, p in zip(before, params, strict=True):
        np.testing.assert_array_equal(b, p)
    assert opt.step_count == 0


def test_large_finite_float32_gradients_are_not_taken_for_overflow():
    """The norm is accumulated in float64: 1e30 squared overflows float32, not float64."""
    params = [np.zeros(4, np.float32)]
    opt = fo.SGD(params, lr=1e-30, nonfinite="raise", max_grad_norm=1e40)
    assert opt.step([np.full(4, 1e30, np.float32)])
    assert opt.last_grad_norm == pytest.approx(2e30)
