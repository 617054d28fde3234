"""Every rule x backend x dtype (x serial/parallel driver) against the float64 oracle.

Hypothesis draws shapes (0-d to 3-d, empty included), value scales over six
decades, and every hyperparameter over its whole range. The oracle is
:mod:`fusedopt.kernels.reference`, written from the formulas (not from the
rules), evaluated in float64 on the same inputs.

Tolerance. float64 results must agree to ``1e-12`` relative; they differ from
the oracle only in the order of operations (bias corrections folded into the
step size, a reciprocal instead of a division). float32 results must agree to
``2e-5`` relative: each output is a dozen float32 operations, each rounding by
at most 2^-24 (6e-8) of its operands' magnitude, so the error is bounded by
about 1e-6 of the magnitudes involved; 2e-5 leaves room and still catches a
formula error, which is off by a factor, not by rounding. "Relative" is to the
magnitudes each output is computed from: the old value, the new value, and the
size of the step (``lr`` times the gradient terms for SGD and Momentum, ``lr``
itself for RMSprop and Adam, whose steps are normalised).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, to_numpy, xp_for
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import fusedopt as fo
from fusedopt import config
from fusedopt.kernels.reference import REFERENCE
from fusedopt.kernels.rules import RULES

RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}

shapes = array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12)
betas = st.floats(0.0, 0.999)
lrs = st.floats(0.0, 1.0)
decays = st.one_of(st.just(0.0), st.floats(0.0, 0.1))
epsilons = st.floats(1e-8, 1.0).map(lambda x: float(np.float32(x)))


@st.composite
def inputs(draw, rule_name: str):
    """Arrays (float64, realistic state) and hyperparameters for one call of a rule."""
    shape = draw(shapes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 10.0 ** draw(st.integers(-3, 3))
    normal = lambda: scale * rng.standard_normal(shape)
    if rule_name == "sgd":
        arrays = (normal(), normal())
        hyper = dict(lr=draw(lrs), weight_decay=draw(decays))
    elif rule_name == "momentum":
        arrays = (normal(), normal(), normal())
        hyper = dict(lr=draw(lrs), beta=draw(betas),
                     dampening=draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
                     nesterov=draw(st.booleans()), weight_decay=draw(decays))
    elif rule_name == "rmsprop":
        arrays = (normal(), normal(), np.abs(normal()) * scale)
        hyper = dict(lr=draw(lrs), beta=draw(betas), eps=draw(epsilons),
                     weight_decay=draw(decays))
    elif rule_name == "adam":
        exp_avg = normal()
        # A reachable state: v is an average of squares, so |m| <= sqrt(v) (Cauchy-Schwarz).
        exp_avg_sq = exp_avg**2 + np.abs(normal()) * scale
        arrays = (normal(), normal(), exp_avg, exp_avg_sq)
        hyper = dict(step=draw(st.integers(1, 10_000)), lr=draw(lrs), beta1=draw(betas),
                     beta2=draw(betas), eps=draw(epsilons), weight_decay=draw(decays),
                     decoupled_weight_decay=draw(st.booleans()),
                     bias_correction=draw(st.booleans()))
    else:
        arrays = (normal(), normal())
        hyper = dict(beta=draw(betas))
    return arrays, hyper


def call(rule_name: str, arrays, hyper, backend):
    getattr(fo, rule_name + "_")(*arrays, **hyper, backend=backend)


def step_magnitude(rule_name, arrays, hyper):
    """How large the step's terms are (see the module docstring)."""
    if rule_name == "sgd":
        p, g = arrays
        return hyper["lr"] * (np.abs(g) + hyper["weight_decay"] * np.abs(p))
    if rule_name == "momentum":
        p, g, vel = arrays
        return hyper["lr"] * (2 * np.abs(g) + hyper.get("weight_decay", 0) * np.abs(p)
                              + np.abs(vel))
    if rule_name in ("rmsprop", "adam"):
        return hyper["lr"] * (1 + np.abs(arrays[0]))
    return 0.0


def assert_matches_oracle(rule_name, before64, after, hyper, dtype):
    rule = RULES[rule_name]
    expected = REFERENCE[rule_name](*before64, **hyper)
    by_name = dict(zip(rule.arrays, before64, strict=True))
    magnitude = step_magnitude(rule_name, before64, hyper)
    for name, got, want in zip(rule.writes, after, expected, strict=True):
        got = to_numpy(got).astype(np.float64)
        scale = np.abs(by_name[name]) + np.abs(want) + magnitude + 1e-300
        err = np.abs(got - want) / scale
        worst = np.unravel_index(np.argmax(err), err.shape) if err.size else None
        assert err.size == 0 or err.max() <= RTOL[dtype], (
            f"{rule_name}.{name} ({dtype}) off by {err.max():.3g} relative at {worst}: "
            f"got {got[worst]!r}, oracle {want[worst]!r}"
        )


@pytest.fixture(params=[b for b in BACKENDS if b != "numba"] + ["numba-serial", "numba-parallel"])
def backend_driver(request, monkeypatch) -> str:
    """Each backend; Numba twice: its serial driver, and its prange driver forced on."""
    backend, _, kind = request.param.partition("-")
    if kind:
        monkeypatch.setattr(config, "NUMBA_PARALLEL_MIN_SIZE",
                            0 if kind == "parallel" else 1 << 62)
    return backend


@pytest.mark.parametrize("rule_name", list(RULES))
def test_rule_matches_oracle(rule_name, backend_driver, dtype):
    backend = backend_driver
    xp = xp_for(backend)

    @given(inputs(rule_name))
    def check(drawn):
        arrays64, hyper = drawn
        arrays = tuple(xp.asarray(a.astype(dtype)) for a in arrays64)
        # The oracle sees exactly the values the backend sees (rounded to dtype).
        before64 = tuple(to_numpy(a).astype(np.float64) for a in arrays)
        call(rule_name, arrays, hyper, backend)
        by_name = dict(zip(RULES[rule_name].arrays, arrays, strict=True))
        after = [by_name[w] for w in RULES[rule_name].writes]
        assert_matches_oracle(rule_name, before64, after, hyper, dtype)
        # Read-only inputs are untouched.
        for name, a, a64 in zip(RULES[rule_name].arrays, arrays, before64, strict=True):
            if name not in RULES[rule_name].writes:
                np.testing.assert_array_equal(to_numpy(a).astype(np.float64), a64)

    check()


@pytest.mark.parametrize("rule_name", list(RULES))
def test_large_array_crosses_parallel_threshold(rule_name, dtype):
    """Arrays above the configured threshold take the prange driver; results still match."""
    n = config.NUMBA_PARALLEL_MIN_SIZE + 13  # not a multiple of any vector width
    rng = np.random.default_rng(7)
    arrays64 = [rng.standard_normal(n) for _ in RULES[rule_name].arrays]
    arrays64[-1] = np.abs(arrays64[-1]) + arrays64[-2] ** 2  # a valid second moment
    hyper = {"sgd": dict(lr=0.1, weight_decay=0.01),
             "momentum": dict(lr=0.1, beta=0.9, nesterov=True),
             "rmsprop": dict(lr=0.01, beta=0.9, eps=1e-6),
             "adam": dict(step=3, lr=0.01, weight_decay=0.01, decoupled_weight_decay=True),
             "ewa": dict(beta=0.9)}[rule_name]
    arrays = tuple(a.astype(dtype) for a in arrays64)
    before64 = tuple(a.astype(np.float64) for a in arrays)
    call(rule_name, arrays, hyper, "numba")
    by_name = dict(zip(RULES[rule_name].arrays, arrays, strict=True))
    assert_matches_oracle(rule_name, before64, [by_name[w] for w in RULES[rule_name].writes],
                          hyper, dtype)


@pytest.mark.parametrize("rule_name", list(RULES))
def test_scalar_rule_matches_oracle_on_python_floats(rule_name):
    """The element rule itself, run as plain Python on floats, agrees with the oracle."""
    rule = RULES[rule_name]

    @given(inputs(rule_name))
    def check(drawn):
        arrays64, hyper = drawn
        flat = [a.reshape(-1) for a in arrays64]
        expected = REFERENCE[rule_name](*arrays64, **hyper)
        scalars = rule.host_scalars(**hyper)
        for i in range(min(flat[0].size, 5)):
            got = rule.element(*(float(a[i]) for a in flat), *scalars)
            for name, g, want in zip(rule.writes, got, expected, strict=True):
                w = want.reshape(-1)[i]
                old = flat[rule.arrays.index(name)][i]
                assert abs(g - w) <= 1e-12 * (abs(old) + abs(w) + 1.0), (name, g, w)

    check()
