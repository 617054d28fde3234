"""The ``"numpy"`` backend: the unfused reference, written back in place.

Every output is computed before the first write, so an error leaves the arrays
as they were. Works on CuPy arrays too (NumPy ufuncs dispatch to CuPy).
"""

from __future__ import annotations

import numpy as np

from fusedopt.backends.base import (
    NORM_SBIG,
    NORM_SSML,
    NORM_TBIG,
    NORM_TSML,
    host_scalars,
    rounding_words,
)
from fusedopt.kernels import rounding as lowp
from fusedopt.kernels.dtypes import Signature
from fusedopt.kernels.reference import REFERENCE
from fusedopt.kernels.registry import Rule

NAME = "numpy"


def is_available() -> tuple[bool, str]:
    """Always available: NumPy is a requirement."""
    return True, "the unfused NumPy reference (always available)"


def prepare(rule: Rule, hyper: dict, signature: Signature,
            rounding: tuple[int, int] | None = None) -> tuple:
    """The reference takes the public hyperparameters as they are."""
    if rule.name not in REFERENCE:
        raise ValueError(f"{rule.name}_: backend='numpy' runs the rule's NumPy oracle, and "
                         f"{rule.name!r} has none; add one to "
                         "fusedopt.kernels.reference.REFERENCE, or use backend='numba'")
    host_scalars(rule, hyper, signature)  # the same range check as the fused backends
    words = rounding_words(rule, signature, rounding) if signature.stochastic else None
    return hyper, signature, words


def launch(rule: Rule, arrays: tuple, prepared: tuple, offset: int = 0) -> None:
    """Run ``rule`` over ``arrays`` in place with the reference, in the compute dtype; 16-bit
    arrays (bit patterns) decoded exactly and stored with the signature's rounding (``offset``:
    the first element's index for stochastic rounding)."""
    hyper, signature, words = prepared
    if words is not None and offset:
        words = [offset, *words[1:]]
    if signature.homogeneous:
        new_values = REFERENCE[rule.name](*arrays, **hyper)
        by_name = dict(zip(rule.arrays, arrays, strict=True))
        for name, value in zip(rule.writes, new_values, strict=True):
            by_name[name][...] = value
        return
    on_host = [_host(a) for a in arrays]
    inputs = [lowp.decode(a, s) if s in lowp.LOW_PRECISION else
              a.astype(signature.compute)
              for a, s in zip(on_host[:len(rule.arrays)], signature.storage, strict=True)]
    if signature.master:
        inputs[0] = on_host[-1].astype(signature.compute)
    new_values = REFERENCE[rule.name](*inputs, **hyper)  # all computed before any write
    outputs = []
    for name, value in zip(rule.writes, new_values, strict=True):
        k = rule.arrays.index(name)
        storage = signature.storage[k]
        if signature.master and k == 0:
            outputs.append((arrays[-1], np.asarray(value, np.float32)))
        if storage in lowp.LOW_PRECISION:
            key = words[k + 1] if words is not None else None
            offset = words[0] if words is not None else 0
            value = lowp.round_to(np.asarray(value, np.float32), storage, key=key,
                                      offset=offset)
        outputs.append((arrays[k], value))
    for target, value in outputs:
        _store(target, value)


def _host(a):
    return a if isinstance(a, np.ndarray) else a.get()


def _store(target, value) -> None:
    if isinstance(target, np.ndarray):
        target[...] = value
    else:  # CuPy
        import cupy

        target[...] = cupy.asarray(np.asarray(value).astype(target.dtype))


def update(rule: Rule, arrays: tuple, hyper: dict, signature: Signature,
           rounding: tuple[int, int] | None = None, offset: int = 0) -> None:
    """Run ``rule`` over ``arrays`` in place with the reference implementation."""
    launch(rule, arrays, prepare(rule, hyper, signature, rounding), offset)


def norm_sums(array, storage: str | None = None) -> tuple[float, float, float]:
    """The accumulators of :func:`fusedopt.backends.base.norm_from_sums`, in float64 (16-bit
    arrays are bit patterns of ``storage``)."""
    if storage in lowp.LOW_PRECISION:
        array = lowp.decode(_host(array), storage)
    x = np.abs(array.astype(np.float64)).reshape(-1)
    big = x > NORM_TBIG
    small = x < NORM_TSML
    med = ~(big | small)  # NaN lands here
    return (float(np.sum((x[big] * NORM_SBIG) ** 2)), float(np.sum(x[med] ** 2)),
            float(np.sum((x[small] * NORM_SSML) ** 2)))
