"""The lecture's identities, and values derived by hand, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import xp_for
from oracle import to_numpy

import fusedopt as fo


def arrays(backend, dtype, *values):
    xp = xp_for(backend)
    return tuple(xp.asarray(np.asarray(v, dtype=dtype)) for v in values)


def test_momentum_with_beta_zero_is_sgd(backend, dtype):
    rng = np.random.default_rng(0)
    p0, g = rng.standard_normal(100), rng.standard_normal(100)
    p_sgd, g1 = arrays(backend, dtype, p0, g)
    p_mom, g2, velocity = arrays(backend, dtype, p0, g, np.zeros(100))
    fo.sgd_(p_sgd, g1, lr=0.1, weight_decay=0.01, backend=backend)
    fo.momentum_(p_mom, g2, velocity, lr=0.1, beta=0.0, weight_decay=0.01, backend=backend)
    np.testing.assert_array_equal(to_numpy(p_mom), to_numpy(p_sgd))


def test_ewa_unrolls_to_weighted_sum(backend, dtype):
    """V_t = sum_i (1-b) b^(t-i) theta_i, from V_0 = 0 (the lecture's unrolled form)."""
    beta, steps = 0.9, 30
    thetas = np.random.default_rng(1).uniform(0, 30, size=(steps, 5))
    (average,) = arrays(backend, dtype, np.zeros(5))
    for t in range(steps):
        (value,) = arrays(backend, dtype, thetas[t])
        fo.ewa_(average, value, beta=beta, backend=backend)
    weights = (1 - beta) * beta ** np.arange(steps - 1, -1, -1)
    expected = weights @ thetas.astype(dtype).astype(np.float64)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(to_numpy(average), expected, rtol=rtol)
    # The weights of the first steps sum to 1 - beta^t: hence the bias at the start.
    assert weights.sum() == pytest.approx(1 - beta**steps)


def test_debiased_ewa_of_constant_is_the_constant_from_step_one(backend, dtype):
    beta, constant = 0.98, 7.5
    (average,) = arrays(backend, dtype, np.zeros(4))
    for t in range(1, 50):
        (value,) = arrays(backend, dtype, np.full(4, constant))
        fo.ewa_(average, value, beta=beta, backend=backend)
        debiased = to_numpy(fo.debias(average, beta=beta, step=t))
        np.testing.assert_allclose(debiased, constant, rtol=1e-5 if dtype == np.float32 else 1e-13)
        assert debiased.dtype == dtype
    # Without the correction the first steps are far too small (the lecture's purple curve).
    (average,) = arrays(backend, dtype, np.zeros(1))
    (value,) = arrays(backend, dtype, [constant])
    fo.ewa_(average, value, beta=beta, backend=backend)
    assert float(to_numpy(average)[0]) == pytest.approx((1 - beta) * constant, rel=1e-6)


def test_debias_is_a_new_array_and_accepts_numbers():
    average = np.ones(3, np.float32)
    out = fo.debias(average, beta=0.5, step=1)
    np.testing.assert_array_equal(out, 2.0)
    np.testing.assert_array_equal(average, 1.0)
    assert out.dtype == np.float32
    assert fo.debias(0.25, beta=0.5, step=2) == pytest.approx(0.25 / 0.75)


def test_adam_first_step_by_hand(backend, dtype):
    """After bias correction the first Adam step is lr * sign(g) (for |g| >> eps)."""
    p, g, m, v = arrays(backend, dtype, [1.0, -2.0, 3.0], [0.5, -4.0, 1e-3], [0, 0, 0], [0, 0, 0])
    fo.adam_(p, g, m, v, step=1, lr=0.1, backend=backend)
    np.testing.assert_allclose(to_numpy(p), [0.9, -1.9, 2.9], rtol=1e-5)
    np.testing.assert_allclose(to_numpy(m), [0.05, -0.4, 1e-4], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(v), [0.00025, 0.016, 1e-9], rtol=1e-5)


def test_adamw_decays_the_parameter_not_the_gradient(backend, dtype):
    """With a zero gradient AdamW only shrinks the parameter: p * (1 - lr*wd)."""
    p, g, m, v = arrays(backend, dtype, [2.0, -4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    fo.adamw_(p, g, m, v, step=1, lr=0.1, weight_decay=0.5, backend=backend)
    np.testing.assert_allclose(to_numpy(p), [2.0 * 0.95, -4.0 * 0.95], rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(m), 0.0)
    # Coupled decay (plain Adam) puts wd*p into the gradient instead: a full lr-sized step.
    p, g, m, v = arrays(backend, dtype, [2.0, -4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    fo.adam_(p, g, m, v, step=1, lr=0.1, weight_decay=0.5, backend=backend)
    np.testing.assert_allclose(to_numpy(p), [1.9, -3.9], rtol=1e-5)


def test_rmsprop_and_momentum_by_hand(backend, dtype):
    p, g, s = arrays(backend, dtype, [1.0], [2.0], [0.0])
    fo.rmsprop_(p, g, s, lr=0.01, beta=0.9, eps=1e-30, backend=backend)
    # s = 0.1 * 4 = 0.4; p = 1 - 0.01 * 2 / sqrt(0.4) (eps > 0 is required; 1e-30 is lost)
    np.testing.assert_allclose(to_numpy(s), [0.4], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(p), [1 - 0.02 / np.sqrt(0.4)], rtol=1e-6)
    p, g, vel = arrays(backend, dtype, [1.0], [2.0], [1.0])
    fo.momentum_(p, g, vel, lr=0.5, beta=0.9, backend=backend)  # lecture form: v = .9 + .2
    np.testing.assert_allclose(to_numpy(vel), [1.1], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(p), [1 - 0.55], rtol=1e-6)
    p, g, vel = arrays(backend, dtype, [1.0], [2.0], [1.0])
    fo.momentum_(p, g, vel, lr=0.5, beta=0.9, dampening=0.0, nesterov=True, backend=backend)
    # v = 0.9 + 2 = 2.9; update = g + beta*v = 2 + 2.61 = 4.61
    np.testing.assert_allclose(to_numpy(vel), [2.9], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(p), [1 - 0.5 * 4.61], rtol=1e-6)


def test_empty_and_zero_dim_arrays(backend, dtype):
    p, g = arrays(backend, dtype, np.zeros(0), np.zeros(0))
    fo.sgd_(p, g, lr=0.1, backend=backend)
    p, g = arrays(backend, dtype, 3.0, 1.0)
    fo.sgd_(p, g, lr=0.5, backend=backend)
    assert float(to_numpy(p)) == 2.5


def test_nan_in_gradient_propagates_like_torch(backend, dtype):
    """A non-finite gradient is not hidden: the element it touches becomes NaN."""
    p, g, m, v = arrays(backend, dtype, [1.0, 1.0], [np.nan, 1.0], [0, 0], [0, 0])
    fo.adam_(p, g, m, v, step=1, backend=backend)
    out = to_numpy(p)
    assert np.isnan(out[0]) and np.isfinite(out[1])
