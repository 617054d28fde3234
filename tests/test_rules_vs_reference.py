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
from conftest import BACKENDS, xp_for
from hypothesis import given
from oracle import call, run_and_check, sample_inputs, to_numpy
from strategies import inputs

from fusedopt import config
from fusedopt.kernels import RULES
from fusedopt.kernels.reference import REFERENCE


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
        run_and_check(rule_name, arrays64, hyper, dtype, backend, xp)

    check()


@pytest.mark.parametrize("rule_name", list(RULES))
def test_large_array_crosses_parallel_threshold(rule_name, dtype):
    """Arrays above the configured threshold take the prange driver; results still match."""
    n = config.NUMBA_PARALLEL_MIN_SIZE + 13  # not a multiple of any vector width
    arrays64, hyper = sample_inputs(rule_name, (n,), seed=7)
    run_and_check(rule_name, arrays64, hyper, dtype, "numba")


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


WEIGHT_DECAYED = [name for name, rule in RULES.items() if "weight_decay" in rule.scalars]


@pytest.mark.parametrize("rule_name", WEIGHT_DECAYED)
def test_no_weight_decay_adds_no_term_so_an_infinite_parameter_stays_infinite(
        rule_name, backend, dtype):
    """``weight_decay=0`` is no term at all, as torch.optim skips it, not ``0 * param``
    (NaN for an infinite parameter). Hand-derived: with a finite gradient and state every
    rule moves ``param`` by a finite step, so an infinity stays that infinity, and the
    state stays finite."""
    xp = xp_for(backend)
    arrays64, hyper = sample_inputs(rule_name, (9,), seed=3)
    hyper = dict(hyper, weight_decay=0.0)
    arrays64[0][:2] = [np.inf, -np.inf]
    arrays = tuple(xp.asarray(a.astype(dtype)) for a in arrays64)
    call(rule_name, arrays, hyper, backend)
    out = [to_numpy(a) for a in arrays]
    assert list(out[0][:2]) == [np.inf, -np.inf]
    assert np.isfinite(out[0][2:]).all()
    rule = RULES[rule_name]
    for name, values in zip(rule.arrays[1:], out[1:], strict=True):
        assert np.isfinite(values).all(), name
