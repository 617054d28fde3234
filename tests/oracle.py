"""The oracle check shared by the test files: a backend's result vs the float64 reference.

Tolerance (see test_rules_vs_reference.py for the reasoning): float64 to 1e-12
and float32 to 2e-5, relative to the magnitudes each output is computed from
(the rule's ``magnitude`` in rule_table.py). No Hypothesis here, so the GPU
machine (which has none) can use it too.
"""

from __future__ import annotations

import numpy as np
from rule_table import RULE_INFO, sample_arrays

import fusedopt as fo
from fusedopt.kernels import RULES
from fusedopt.kernels.reference import REFERENCE

RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def call(rule_name: str, arrays, hyper, backend):
    fo.functional.FUNCTIONS[rule_name + "_"](*arrays, **hyper, backend=backend)


def assert_matches_oracle(rule_name, before64, after, hyper, dtype):
    rule = RULES[rule_name]
    expected = REFERENCE[rule_name](*before64, **hyper)
    by_name = dict(zip(rule.arrays, before64, strict=True))
    magnitude = RULE_INFO[rule_name].magnitude(by_name, hyper)
    for name, got, want in zip(rule.writes, after, expected, strict=True):
        got = to_numpy(got).astype(np.float64)
        scale = np.abs(by_name[name]) + np.abs(want) + magnitude + 1e-300
        err = np.abs(got - want) / scale
        worst = np.unravel_index(np.argmax(err), err.shape) if err.size else None
        assert err.size == 0 or err.max() <= RTOL[dtype], (
            f"{rule_name}.{name} ({dtype}) off by {err.max():.3g} relative at {worst}: "
            f"got {got[worst]!r}, oracle {want[worst]!r}"
        )


def to_numpy(a) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.array(a)


def sample_inputs(rule_name: str, shape, seed: int = 0, scale: float = 1.0):
    """Deterministic arrays (float64, a reachable state) and typical hyperparameters."""
    by_name = sample_arrays(rule_name, shape, seed, scale)
    arrays = tuple(by_name[name] for name in RULES[rule_name].arrays)
    return arrays, dict(RULE_INFO[rule_name].sample_hyper)


def run_and_check(rule_name: str, arrays64, hyper, dtype, backend, xp=np):
    """Run one call on ``backend`` with arrays of ``xp`` and check it against the oracle."""
    dtype = np.dtype(dtype)
    arrays = tuple(xp.asarray(a.astype(dtype)) for a in arrays64)
    before64 = tuple(to_numpy(a).astype(np.float64) for a in arrays)
    call(rule_name, arrays, hyper, backend)
    rule = RULES[rule_name]
    by_name = dict(zip(rule.arrays, arrays, strict=True))
    assert_matches_oracle(rule_name, before64, [by_name[w] for w in rule.writes], hyper, dtype)
    for name, a, a64 in zip(rule.arrays, arrays, before64, strict=True):
        if name not in rule.writes:  # read-only inputs are untouched
            np.testing.assert_array_equal(to_numpy(a).astype(np.float64), a64)
