"""The ``"numpy"`` backend: the unfused reference, written back in place.

Every output is computed before the first write, so an error leaves the arrays
as they were. Works on CuPy arrays too (NumPy ufuncs dispatch to CuPy).
"""

from __future__ import annotations

import numpy as np

from fusedopt.backends.base import NORM_SBIG, NORM_SSML, NORM_TBIG, NORM_TSML, host_scalars
from fusedopt.kernels.dtypes import Signature
from fusedopt.kernels.reference import REFERENCE
from fusedopt.kernels.registry import Rule

NAME = "numpy"


def is_available() -> tuple[bool, str]:
    """Always available: NumPy is a requirement."""
    return True, "the unfused NumPy reference (always available)"


def prepare(rule: Rule, hyper: dict, signature: Signature) -> tuple[dict, Signature]:
    """The reference takes the public hyperparameters as they are."""
    if rule.name not in REFERENCE:
        raise ValueError(f"{rule.name}_: backend='numpy' runs the rule's NumPy oracle, and "
                         f"{rule.name!r} has none; add one to "
                         "fusedopt.kernels.reference.REFERENCE, or use backend='numba'")
    host_scalars(rule, hyper, signature)  # the same range check as the fused backends
    return hyper, signature


def launch(rule: Rule, arrays: tuple, prepared: tuple[dict, Signature]) -> None:
    """Run ``rule`` over ``arrays`` in place with the reference, in the compute dtype."""
    hyper, signature = prepared
    inputs = arrays if signature.homogeneous else tuple(
        a.astype(signature.compute) for a in arrays)
    new_values = REFERENCE[rule.name](*inputs, **hyper)
    by_name = dict(zip(rule.arrays, arrays, strict=True))
    for name, value in zip(rule.writes, new_values, strict=True):
        by_name[name][...] = value


def update(rule: Rule, arrays: tuple, hyper: dict, signature: Signature) -> None:
    """Run ``rule`` over ``arrays`` in place with the reference implementation."""
    launch(rule, arrays, prepare(rule, hyper, signature))


def norm_sums(array) -> tuple[float, float, float]:
    """The accumulators of :func:`fusedopt.backends.base.norm_from_sums`, in float64."""
    x = np.abs(array.astype(np.float64)).reshape(-1)
    big = x > NORM_TBIG
    small = x < NORM_TSML
    med = ~(big | small)  # NaN lands here
    return (float(np.sum((x[big] * NORM_SBIG) ** 2)), float(np.sum(x[med] ** 2)),
            float(np.sum((x[small] * NORM_SSML) ** 2)))
