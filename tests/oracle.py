"""The oracle check shared by the test files: a backend's result vs the float64 reference.

Tolerance (see test_rules_vs_reference.py for the reasoning): float64 to 1e-12
and float32 to 2e-5, relative to the magnitudes each output is computed from.
No Hypothesis here, so the GPU machine (which has none) can use it too.
"""

from __future__ import annotations

import numpy as np

import fusedopt as fo
from fusedopt.kernels.reference import REFERENCE
from fusedopt.kernels.rules import RULES

RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}

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


def to_numpy(a) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.array(a)


def sample_inputs(rule_name: str, shape, seed: int = 0, scale: float = 1.0):
    """Deterministic arrays (float64, a reachable state) and typical hyperparameters."""
    rng = np.random.default_rng(seed)
    normal = lambda: scale * rng.standard_normal(shape)
    arrays = [normal() for _ in RULES[rule_name].arrays]
    if rule_name == "rmsprop":
        arrays[2] = np.abs(arrays[2]) * scale
    if rule_name == "adam":
        arrays[3] = arrays[2] ** 2 + np.abs(arrays[3]) * scale
    hyper = {"sgd": dict(lr=0.1, weight_decay=0.01),
             "momentum": dict(lr=0.1, beta=0.9, nesterov=True, dampening=0.0),
             "rmsprop": dict(lr=0.01, beta=0.9, eps=1e-6, weight_decay=0.01),
             "adam": dict(step=3, lr=0.01, weight_decay=0.01, decoupled_weight_decay=True),
             "ewa": dict(beta=0.9)}[rule_name]
    return tuple(arrays), hyper


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
