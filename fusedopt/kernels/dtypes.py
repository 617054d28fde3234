"""Storage dtypes per array, and the compute dtype of a call.

Each array of a call is stored in its own dtype; the rule computes in one
compute dtype: float64 for float64 parameters, float32 otherwise. A
:class:`Signature` describes one call that way (with two switches: a float32
master copy of a low-precision parameter, and stochastic rounding of the
low-precision stores); the backends key their compiled code on it, and the
checks ask :func:`signature` whether a combination is allowed:

=============================  =================================================
array                          storage dtypes
=============================  =================================================
the parameter (first array)    float32, bfloat16, float16 or float64
inputs (the gradient)          the parameter's dtype, or float32
state (the written arrays)     float32, bfloat16 or the parameter's dtype (float16
                               for float16 parameters, as torch keeps them);
                               float64 with float64 parameters
master (optional)              float32, for a bfloat16 or float16 parameter
=============================  =================================================

Storage dtypes are named by strings (``"bfloat16"`` has no NumPy dtype without
the ``ml_dtypes`` extra); the kernels see 16-bit arrays as their bit patterns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

FLOAT32, FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
BFLOAT16, FLOAT16 = "bfloat16", "float16"
#: NumPy dtypes a parameter may have with no extras installed (the checks' fast path).
PARAM_DTYPES: tuple[np.dtype, ...] = (FLOAT32, FLOAT64)
#: Every storage dtype, by name.
STORAGE: tuple[str, ...] = ("float32", "float64", BFLOAT16, FLOAT16)
#: Stored as 16-bit patterns, computed in float32.
LOW_PRECISION: tuple[str, ...] = (BFLOAT16, FLOAT16)
ITEMSIZE = {"float32": 4, "float64": 8, BFLOAT16: 2, FLOAT16: 2}
#: Short names for kernel and driver names.
SHORT = {"float32": "f32", "float64": "f64", BFLOAT16: "bf16", FLOAT16: "f16"}
#: Allowed state dtypes (the ``state_dtype=`` of the optimizers).
STATE_DTYPES: tuple[str, ...] = ("float32", BFLOAT16)


#: Precision recipes for a training loop: name -> (parameter and gradient storage, state
#: storage, a float32 master copy, stochastic rounding). The demo, the planner and the
#: benchmark all take these names.
RECIPES: dict[str, tuple[str, str, bool, bool]] = {
    "fp32": ("float32", "float32", False, False),
    "bf16-params": (BFLOAT16, "float32", False, False),
    "fp32-master": (BFLOAT16, "float32", True, False),
    "fp16-master": (FLOAT16, "float32", True, False),
    "bf16": (BFLOAT16, BFLOAT16, False, False),
    "bf16-sr": (BFLOAT16, BFLOAT16, False, True),
}


_NAMES: dict = {}  # dtype -> storage name: dtype.name is slow, and this is on every step


def storage_name(dtype) -> str | None:
    """The storage name of a NumPy/CuPy dtype (``ml_dtypes.bfloat16`` included), or None."""
    if isinstance(dtype, str) and dtype in STORAGE:
        return dtype
    found = _NAMES.get(dtype, False) if isinstance(dtype, np.dtype) else False
    if found is not False:
        return found
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        return None
    name = resolved.name
    found = name if name in STORAGE and resolved.itemsize == ITEMSIZE[name] else None
    _NAMES[resolved] = found  # bfloat16: ml_dtypes' dtype (kind 'V'), named so
    return found


def as_bits(a, storage: str):
    """A NumPy or CuPy array as the kernels take it: 16-bit storage as its bit patterns
    (a ``uint16`` view, no copy)."""
    return a.view(np.uint16) if storage in LOW_PRECISION and a.dtype != np.uint16 else a


def compute_dtype(param_dtype) -> np.dtype:
    """float64 for float64 parameters, float32 for everything else."""
    return FLOAT64 if storage_name(param_dtype) == "float64" else FLOAT32


@dataclass(frozen=True)
class Signature:
    """The storage dtype of each array of a rule's call, in order, and the compute dtype.

    ``master``: the call has one more array, a float32 copy of the (16-bit)
    parameter that the rule reads and writes; the parameter is written from it.
    ``stochastic``: 16-bit stores round stochastically (else to nearest even).
    """

    storage: tuple[str, ...]
    compute: np.dtype
    master: bool = False
    stochastic: bool = False

    def __post_init__(self):
        object.__setattr__(self, "storage", tuple(storage_name(d) or str(d)
                                                  for d in self.storage))
        object.__setattr__(self, "compute", np.dtype(self.compute))
        # every update looks its scalars up by signature: hash it once, not per call
        object.__setattr__(self, "_hash", hash((self.storage, self.compute, self.master,
                                                self.stochastic)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def homogeneous(self) -> bool:
        """Every array stored in the compute dtype (and no master copy)."""
        return not self.master and all(d == self.compute.name for d in self.storage)

    @property
    def low_precision(self) -> bool:
        """Some array is stored in 16 bits."""
        return any(d in LOW_PRECISION for d in self.storage)

    @property
    def key(self) -> str:
        """A name for generated code: ``f32`` when homogeneous, else one code per array."""
        if self.homogeneous:
            return SHORT[self.compute.name]
        key = "_".join(SHORT[d] for d in self.storage) + "__" + SHORT[self.compute.name]
        return key + ("_master" if self.master else "") + ("_sr" if self.stochastic else "")


class DtypeError(TypeError):
    """A dtype combination no backend runs; ``argument`` names the array at fault."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


@cache
def _signature(names: tuple[str, ...], dtypes: tuple, writes: tuple[str, ...] | None,
               master: bool, stochastic: bool) -> Signature:
    first = names[0]
    storage = tuple(storage_name(d) for d in dtypes)
    param = storage[0]
    if param is None:
        raise DtypeError(first, f"{first} has dtype {dtypes[0]}; fusedopt updates float32, "
                                f"bfloat16, float16 or float64 arrays (allocate {first} with "
                                "one of those)")
    written = set(names[1:] if writes is None else writes)
    for name, dtype, store in zip(names[1:], dtypes[1:], storage[1:], strict=True):
        if name in written:  # torch keeps float16 parameters' state in float16: so may we
            allowed = ("float64",) if param == "float64" else (*STATE_DTYPES, param)
            hint = (f"allocate {name} with dtype={first}.dtype" if param in allowed
                    else "allocate it as float32 (or bfloat16)")
        else:
            allowed = (param, "float32")
            hint = f"allocate {name} with dtype={first}.dtype (or float32)"
        if store not in allowed:
            raise DtypeError(name, f"{name} has dtype {dtype} but {first} has {dtypes[0]}; "
                                   f"{hint}")
    if master and param not in LOW_PRECISION:
        raise DtypeError("master", f"master weights are for bfloat16 or float16 parameters, "
                                   f"and {first} is {param}; drop master")
    low_store = master or any(s in LOW_PRECISION for n, s in zip(names, storage, strict=True)
                              if n in written or n == first)
    return Signature(storage, compute_dtype(param), master, stochastic and low_store)


def signature(names: tuple[str, ...], dtypes, *, writes: tuple[str, ...] | None = None,
              master: bool = False, stochastic: bool = False) -> Signature:
    """The :class:`Signature` of a call whose arrays ``names`` have ``dtypes``.

    ``writes`` names the arrays the rule writes (the state; the parameter is
    always first); the others are inputs, like the gradient. ``None``: every
    array after the first is state. Raises :class:`DtypeError` (a
    ``TypeError``) naming the first array whose dtype is not allowed.
    Memoised: the checks call it on every update.
    """
    return _signature(tuple(names), tuple(d if isinstance(d, str) else np.dtype(d)
                                          for d in dtypes),
                      None if writes is None else tuple(writes), bool(master), bool(stochastic))


@cache
def _homogeneous(rule_arrays: tuple[str, ...], dtype: np.dtype) -> Signature:
    return _signature(rule_arrays, (dtype,) * len(rule_arrays), None, False, False)


def homogeneous(rule_arrays: tuple[str, ...], dtype) -> Signature:
    """Every array of a rule in ``dtype`` (memoised: the fast path of every update)."""
    return _homogeneous(tuple(rule_arrays), np.dtype(dtype))
