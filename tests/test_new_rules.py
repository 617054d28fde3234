"""Lion, NAdam and AMSGrad beyond the generic tests: hand-derived values, Lion over 50 steps
against the paper's equations, AMSGrad as Adam's switch, NAdam's host-side mu product.

(The generic tests cover them too: the float64 oracle on Hypothesis inputs on every
backend, the CUDA source compiled by NVRTC and run on the host, torch parity over
50 steps, checkpoints, arena == list.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from optim_helpers import gradients, initial, train

import fusedopt as fo
from fusedopt.kernels.reference import lion as paper_lion
from fusedopt.kernels.rules.nadam import _mu_product_at, nadam_mu, nadam_mu_product

BACKENDS = ["numba", "numpy"]


# ---------------------------------------------------------------------------- Lion
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lion_by_hand_and_sign_of_zero(backend, dtype):
    p = np.array([1.0, 1.0, 1.0, -2.0], dtype)
    g = np.array([0.0, 1.0, -1.0, 0.5], dtype)
    m = np.array([0.0, 0.0, 0.0, -10.0], dtype)
    fo.lion_(p, g, m, lr=0.125, beta1=0.5, beta2=0.75, weight_decay=0.5, backend=backend)
    # c = 0.5 m + 0.5 g = [0, 0.5, -0.5, -4.75]; p = p (1 - 0.0625) - 0.125 sign(c)
    np.testing.assert_array_equal(p, np.array([0.9375, 0.8125, 1.0625, -1.75], dtype))
    np.testing.assert_array_equal(m, np.array([0.0, 0.25, -0.25, -7.375], dtype))


def test_lion_sign_of_zero_on_the_cuda_path(host_cupy):
    p = host_cupy.asarray(np.array([1.0, 1.0], np.float32))
    g = host_cupy.asarray(np.array([0.0, -0.0], np.float32))
    m = host_cupy.asarray(np.zeros(2, np.float32))
    fo.lion_(p, g, m, lr=0.5)
    np.testing.assert_array_equal(np.array(p), [1.0, 1.0])


@pytest.mark.parametrize("use_arena", [False, True], ids=["list", "arena"])
def test_lion_optimizer_follows_the_papers_equations_for_50_steps(use_arena):
    """fo.Lion (float64) against the paper's Algorithm 2 written in NumPy, step by step."""
    grads = gradients(50, dtype=np.float64)
    params = fo.ParamArena(initial(dtype=np.float64)) if use_arena else initial(
        dtype=np.float64)
    opt = fo.Lion(params, lr=3e-3, beta1=0.9, beta2=0.99, weight_decay=0.1)
    train(opt, params if use_arena else None, grads)
    expected = initial(dtype=np.float64)
    momenta = [np.zeros_like(x) for x in expected]
    for step_grads in grads:
        for k, g in enumerate(step_grads):
            expected[k], momenta[k] = paper_lion(expected[k], g, momenta[k], lr=3e-3, beta1=0.9,
                                                 beta2=0.99, weight_decay=0.1)
    got = params.params if use_arena else params
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- NAdam
@pytest.mark.parametrize("backend", BACKENDS)
def test_nadam_first_step_by_hand(backend):
    """Step 1 from zero state, written out from Dozat's formulas with plain floats."""
    g, p, lr, b1, b2, eps, psi = 0.5, 2.0, 0.1, 0.9, 0.999, 1e-8, 4e-3
    mu1 = b1 * (1 - 0.5 * 0.96 ** (1 * psi))
    mu2 = b1 * (1 - 0.5 * 0.96 ** (2 * psi))
    m = (1 - b1) * g
    v = (1 - b2) * g * g
    m_hat = mu2 * m / (1 - mu1 * mu2) + (1 - mu1) * g / (1 - mu1)
    expected = p - lr * m_hat / (math.sqrt(v / (1 - b2)) + eps)
    arrays = [np.array([p]), np.array([g]), np.zeros(1), np.zeros(1)]
    fo.nadam_(*arrays, step=1, lr=lr, backend=backend)
    assert arrays[0][0] == pytest.approx(expected, rel=1e-14)
    assert arrays[2][0] == pytest.approx(m) and arrays[3][0] == pytest.approx(v)


@pytest.mark.parametrize("beta1, psi", [(0.85, 0.01), (0.9, 4e-3), (0.999, 0.5), (0.9, 0.0),
                                        (0.9, 1e-12), (0.5, 100.0)])
def test_nadam_mu_product_in_closed_form_equals_the_running_product(beta1, psi):
    product = 1.0
    for step in range(1, 401):
        product *= nadam_mu(beta1, psi, step)
        if step in (1, 2, 3, 50, 128, 400) and product > 1e-290:
            assert nadam_mu_product(beta1, psi, step) == pytest.approx(product, rel=1e-13)


def test_nadam_at_any_step_costs_the_same_and_is_deterministic():
    """No loop over steps: a checkpoint at step 2**53 does not hang the next step."""
    import time

    start = time.perf_counter()
    values = [nadam_mu_product(0.9, 1e-9, 2**53 - k) for k in range(3)]
    assert time.perf_counter() - start < 1.0
    assert values[0] == _mu_product_at.__wrapped__(0.9, 1e-9, 2**53)  # a pure function
    arrays = [np.ones(4), np.ones(4), np.zeros(4), np.zeros(4)]
    fo.nadam_(*arrays, step=2**53, lr=0.1)
    assert np.isfinite(arrays[0]).all()


def test_nadamw_is_nadam_with_decoupled_decay():
    p1, p2 = np.ones(3), np.ones(3)
    g = np.array([0.1, -0.2, 0.3])
    s1 = [np.zeros(3), np.zeros(3)]
    s2 = [np.zeros(3), np.zeros(3)]
    fo.nadam_(p1, g, *s1, step=1, lr=0.01, weight_decay=0.5, decoupled_weight_decay=True)
    p2 *= 1 - 0.01 * 0.5  # decay the parameter first, then NAdam without decay
    fo.nadam_(p2, g, *s2, step=1, lr=0.01)
    np.testing.assert_allclose(p1, p2, rtol=1e-15)


# ------------------------------------------------------------------------- AMSGrad
@pytest.mark.parametrize("backend", BACKENDS)
def test_amsgrad_keeps_the_largest_second_moment(backend):
    p, m, v, vmax = np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1)
    adam_p, adam_m, adam_v = np.zeros(1), np.zeros(1), np.zeros(1)
    for t, g in enumerate([3.0, 0.1, 0.1], start=1):
        fo.amsgrad_(p, np.array([g]), m, v, vmax, step=t, lr=0.1, beta2=0.5, backend=backend)
        fo.adam_(adam_p, np.array([g]), adam_m, adam_v, step=t, lr=0.1, beta2=0.5,
                 backend=backend)
        assert vmax[0] == max(v[0], vmax[0])
    # v after the big gradient: 0.5*9 = 4.5, then 2.255, 1.1325: the maximum stays 4.5
    assert vmax[0] == pytest.approx(4.5) and v[0] == pytest.approx(1.1325)
    assert abs(p[0]) < abs(adam_p[0])  # a larger denominator: smaller steps than Adam


def test_adam_amsgrad_switch_runs_amsgrad_per_group():
    first, second = initial()[:2], initial()[2:]
    opt = fo.Adam([{"params": first, "amsgrad": True}, {"params": second}], lr=0.01)
    assert [g.rule.name for g in opt.groups] == ["amsgrad", "adam"]
    opt.step(gradients(1)[0])
    assert len(opt.groups[0].state[0]) == 3 and len(opt.groups[1].state[0]) == 2
    by_hand = initial()[:2]
    state = [[np.zeros_like(x) for _ in range(3)] for x in by_hand]
    for x, g, s in zip(by_hand, gradients(1)[0][:2], state, strict=True):
        fo.amsgrad_(x, g, *s, step=1, lr=0.01)
    for a, b in zip(first, by_hand, strict=True):
        np.testing.assert_array_equal(a, b)
    assert fo.AdamW([np.zeros(2)], amsgrad=True).rule.name == "amsgrad"


def test_a_checkpoint_carries_the_switch(tmp_path):
    """The checkpoint's hyperparameters decide the rule: an AMSGrad state loads into an Adam
    built without the flag, and an old checkpoint with no 'amsgrad' key is plain Adam."""
    source = fo.Adam(initial(), lr=0.01, amsgrad=True)
    train(source, None, gradients(3))
    fo.save(tmp_path / "ck.npz", source)
    target = fo.Adam(initial(seed=4), lr=0.01)
    fo.load(tmp_path / "ck.npz", target)
    assert target.rule.name == "amsgrad" and target.groups[0].hyper["amsgrad"] is True
    grads = gradients(2, seed=7)
    train(source, None, grads)
    train(target, None, grads)
    for a, b in zip(source.state_dict()["groups"][0]["params"],
                    target.state_dict()["groups"][0]["params"], strict=True):
        np.testing.assert_array_equal(a, b)

    plain = fo.Adam(initial(), lr=0.01)
    train(plain, None, gradients(1))
    old = plain.state_dict()
    del old["groups"][0]["hyper"]["amsgrad"]  # as written before the switch existed
    fresh = fo.Adam(initial(), lr=0.01, amsgrad=True)
    fresh.load_state_dict(old)
    assert fresh.rule.name == "adam" and fresh.groups[0].hyper["amsgrad"] is False
