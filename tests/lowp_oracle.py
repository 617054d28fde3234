"""The oracle for 16-bit storage: the float64 reference, then the stated rounding.

A 16-bit output is checked against the float64 oracle's value ``want``:

* nearest rounding: where ``want`` is farther from a rounding boundary than the
  float32 computation's error bound (``RTOL`` of oracle.py, relative to the
  magnitudes involved), the stored value is exactly ``want`` rounded to
  nearest; everywhere, it is within one unit in the last place of ``want``;
* stochastic rounding: within one unit in the last place (it may round either
  way), and never beyond the two neighbours of ``want`` (allowing that error).

float32 outputs (state, the master copy) are checked as oracle.py checks
float32 arrays; a 16-bit parameter with a master copy must be the master's
new value rounded (nearest: exactly; stochastic: one of its two neighbours).
The 16-bit values themselves come from ``ml_dtypes`` (bfloat16) and NumPy
(float16), never from fusedopt's own conversions.
"""

from __future__ import annotations

import numpy as np
from oracle import RTOL
from rule_table import RULE_INFO

from fusedopt.kernels import RULES
from fusedopt.kernels.reference import REFERENCE

ml_dtypes = __import__("pytest").importorskip(
    "ml_dtypes", reason="ml_dtypes (the bfloat16 NumPy dtype) is an optional extra")

NUMPY_DTYPE = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16),
               "float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
F32_RTOL = RTOL[np.dtype(np.float32)]


def to_storage(values64, storage: str) -> np.ndarray:
    """float64 values stored in ``storage`` (through float32, nearest-even: ml_dtypes/NumPy)."""
    with np.errstate(over="ignore"):
        return np.asarray(values64, np.float64).astype(np.float32).astype(NUMPY_DTYPE[storage])


def spacing(values, storage: str) -> tuple[np.ndarray, np.ndarray]:
    """The gaps to the next smaller and larger magnitudes around stored ``values``."""
    dtype = NUMPY_DTYPE[storage]
    q = np.abs(np.asarray(values, dtype))
    bits = q.view(np.uint16).astype(np.int32)
    up = (bits + 1).astype(np.uint16).view(dtype).astype(np.float64)
    down = np.maximum(bits - 1, 0).astype(np.uint16).view(dtype).astype(np.float64)
    q64 = q.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf at the top of the range
        return q64 - down, up - q64


def check_16bit(name: str, got, want, scale, storage: str, stochastic: bool) -> None:
    got64 = np.asarray(got).astype(np.float64)
    tol = F32_RTOL * scale  # the float32 computation's error bound
    nearest = to_storage(want, storage)
    below, above = spacing(nearest, storage)
    ulp = np.maximum(below, above)
    finite = np.isfinite(want) & np.isfinite(nearest.astype(np.float64))
    err = np.abs(got64 - want)
    assert np.all(~finite | (err <= ulp + tol)), (
        f"{name} ({storage}) more than one ulp from the oracle: worst {err[finite].max():.3g}")
    if not stochastic:
        q = nearest.astype(np.float64)
        margin = np.minimum(np.abs(want) - (np.abs(q) - below / 2),
                            (np.abs(q) + above / 2) - np.abs(want))
        clear = finite & (margin > tol) & (np.sign(want) == np.sign(q))
        mismatch = clear & (got64 != q)
        assert not mismatch.any(), (
            f"{name} ({storage}) is not the nearest value where the oracle is unambiguous: "
            f"got {got64[mismatch][:3]}, nearest {q[mismatch][:3]}, oracle {want[mismatch][:3]}")


def check_call(rule_name: str, before64: dict, after: dict, hyper: dict, storage: dict,
               stochastic: bool, master_before=None, master_after=None) -> None:
    """``after`` (NumPy arrays by name, 16-bit ones as ml_dtypes/float16) against the oracle
    run on ``before64`` (the stored inputs as float64; the parameter from the master copy)."""
    rule = RULES[rule_name]
    inputs = dict(before64)
    if master_before is not None:
        inputs[rule.arrays[0]] = np.asarray(master_before, np.float64)
    expected = REFERENCE[rule_name](*(inputs[a] for a in rule.arrays), **hyper)
    magnitude = RULE_INFO[rule_name].magnitude(inputs, hyper)
    for name, want in zip(rule.writes, expected, strict=True):
        want = np.asarray(want, np.float64)
        scale = np.abs(inputs[name]) + np.abs(want) + magnitude + 1e-300
        if master_after is not None and name == rule.arrays[0]:
            check_f32(name + " (master)", master_after, want, scale)
            rounded = to_storage(master_after.astype(np.float64), storage[name])
            got = after[name]
            if not stochastic:
                np.testing.assert_array_equal(got.view(np.uint16), rounded.view(np.uint16),
                                              err_msg=f"{name} is not its master rounded")
            else:
                check_16bit(name + " from its master", got, master_after.astype(np.float64),
                            np.abs(master_after.astype(np.float64)) + 1e-300,
                            storage[name], True)
            continue
        if storage[name] in ("bfloat16", "float16"):
            check_16bit(name, after[name], want, scale, storage[name], stochastic)
        else:
            check_f32(name, after[name], want, scale)


def check_f32(name: str, got, want, scale) -> None:
    err = np.abs(np.asarray(got, np.float64) - want) / scale
    assert err.size == 0 or err.max() <= F32_RTOL, f"{name} (float32) off by {err.max():.3g}"
