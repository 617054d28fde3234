"""Storage dtypes per array, and the compute dtype of a call.

Each array of a call is stored in its own dtype; the rule computes in one
compute dtype: float64 for float64 parameters, float32 otherwise. A
:class:`Signature` describes one call that way; the backends key their
compiled code on it, and the checks ask :func:`signature` whether a
combination is allowed.

Today every array of a call has its parameter's dtype, float32 or float64
(the mixed-precision work adds bfloat16 and float16 storage on top of this
plumbing).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

FLOAT32, FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
#: The dtypes a parameter may be stored in.
PARAM_DTYPES: tuple[np.dtype, ...] = (FLOAT32, FLOAT64)
#: Short names for kernel and driver names.
SHORT = {FLOAT32: "f32", FLOAT64: "f64"}


def compute_dtype(param_dtype) -> np.dtype:
    """float64 for float64 parameters, float32 for everything else."""
    return FLOAT64 if np.dtype(param_dtype) == FLOAT64 else FLOAT32


@dataclass(frozen=True)
class Signature:
    """The storage dtype of each array of a rule's call, in order, and the compute dtype."""

    storage: tuple[np.dtype, ...]
    compute: np.dtype

    @property
    def homogeneous(self) -> bool:
        """Every array stored in the compute dtype."""
        return all(d == self.compute for d in self.storage)

    @property
    def key(self) -> str:
        """A name for generated code: ``f32`` when homogeneous, else one code per array."""
        if self.homogeneous:
            return SHORT[self.compute]
        return "_".join(SHORT[d] for d in self.storage) + "__" + SHORT[self.compute]


class DtypeError(TypeError):
    """A dtype combination no backend runs; ``argument`` names the array at fault."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


@cache
def _signature(names: tuple[str, ...], dtypes: tuple[np.dtype, ...]) -> Signature:
    first, first_dtype = names[0], dtypes[0]
    if first_dtype not in PARAM_DTYPES:
        raise DtypeError(first, f"{first} has dtype {first_dtype}; fusedopt updates float32 or "
                                f"float64 arrays (allocate {first} with one of those)")
    for name, dtype in zip(names[1:], dtypes[1:], strict=True):
        if dtype != first_dtype:
            raise DtypeError(name, f"{name} has dtype {dtype} but {first} has {first_dtype}; "
                                   f"allocate {name} with dtype={first}.dtype")
    return Signature(tuple(dtypes), compute_dtype(first_dtype))


def signature(names: tuple[str, ...], dtypes) -> Signature:
    """The :class:`Signature` of a call whose arrays ``names`` have ``dtypes``.

    Raises :class:`DtypeError` (a ``TypeError``) naming the first array whose
    dtype is not allowed. Memoised: the checks call it on every update.
    """
    return _signature(tuple(names), tuple(np.dtype(d) for d in dtypes))


@cache
def _homogeneous(rule_arrays: tuple[str, ...], dtype: np.dtype) -> Signature:
    return _signature(rule_arrays, (dtype,) * len(rule_arrays))


def homogeneous(rule_arrays: tuple[str, ...], dtype) -> Signature:
    """Every array of a rule in ``dtype`` (memoised: the fast path of every update)."""
    return _homogeneous(tuple(rule_arrays), np.dtype(dtype))
