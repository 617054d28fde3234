"""Input checks shared by every public entry point: cheap, complete, before any write.

Every check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right
kind, wrong value) with a message that names the function, the argument and
the fix. Nothing is written until all checks pass.
"""

from __future__ import annotations

import itertools
import math
from numbers import Integral, Real

import numpy as np

from fusedopt import backends
from fusedopt.backends.base import overlap_error
from fusedopt.backends.dispatch import (
    array_kind,
    as_base_array,
    backend_for,
    from_dlpack,
    from_dlpack_storage,
)
from fusedopt.kernels import dtypes
from fusedopt.kernels.dtypes import DtypeError
from fusedopt.kernels.registry import Hyper

FLOAT_DTYPES = dtypes.PARAM_DTYPES
_NDARRAY = np.ndarray
_HOMOGENEOUS: dict = {}  # (rule arrays, dtype) -> Signature: the fast path's, one lookup

__all__ = ["FLOAT_DTYPES", "array_kind", "arrays", "as_base_array", "backend_for", "beta",
           "count", "flag", "from_dlpack", "hyperparameters", "no_overlap_among",
           "overlap_error", "ranges_overlap", "real", "step"]


def ranges_overlap(a, b) -> bool:
    """Whether two contiguous NumPy or CuPy arrays share any bytes."""
    if not a.size or not b.size:
        return False
    if isinstance(a, _NDARRAY):
        return bool(np.may_share_memory(a, b))
    return a.data.ptr < b.data.ptr + b.nbytes and b.data.ptr < a.data.ptr + a.nbytes


def no_overlap_among(fname: str, what: str, arrays: list, names: list[str] | None = None
                     ) -> None:
    """Raise if any two of many contiguous arrays share memory (sorted by address: n log n).

    ``names`` (one per array) name the culprits; otherwise ``what`` and their indices do.
    """
    spans = []
    for k, a in enumerate(arrays):
        if a.size:
            start = a.ctypes.data if isinstance(a, _NDARRAY) else a.data.ptr
            device = -1 if isinstance(a, _NDARRAY) else a.device.id
            spans.append((device, start, start + a.nbytes, k))
    spans.sort()
    for (dev_a, _, end_a, k_a), (dev_b, start_b, _, k_b) in itertools.pairwise(spans):
        if dev_a == dev_b and start_b < end_a:
            first, second = sorted((k_a, k_b))
            if names is not None:
                raise ValueError(f"{fname}: {names[first]} and {names[second]} share memory; "
                                 f"each of the {what} needs its own")
            raise ValueError(f"{fname}: {what} {first} and {second} share memory (the same "
                             "array given twice?); each parameter must have its own memory")


def _root(a) -> int:
    """The id of the ndarray that owns ``a``'s memory (the end of its ``.base`` chain)."""
    while isinstance(a.base, _NDARRAY):
        a = a.base
    return id(a)


def same_owner(a, b) -> bool:
    """Whether two NumPy arrays are views of one array's memory (no address read)."""
    return _root(a) == _root(b)


def owners(arrays: list) -> dict[int, list[int]] | None:
    """NumPy ``arrays``' indices grouped by the array that owns their memory (for
    :func:`no_alias`, which an optimizer calls every step with the same written arrays);
    None for CuPy arrays, which are compared by address."""
    if not arrays or not isinstance(arrays[0], _NDARRAY):
        return None
    found: dict[int, list[int]] = {}
    for i, a in enumerate(arrays):
        found.setdefault(_root(a), []).append(i)
    return found


def no_alias(fname: str, written: list, written_names, read: list, read_names,
             owned: dict[int, list[int]] | None = None) -> None:
    """Raise if any array of ``read`` shares memory with any array of ``written``.

    NumPy arrays are grouped by the array that owns their memory, and only views
    of one owner are compared (no address is read: fast for hundreds of tensors);
    CuPy arrays are compared by their device address ranges, sorted. The names are
    lists, or callables returning them (built only for an error). ``owned`` is
    :func:`owners` of ``written``, when the caller keeps it (the written arrays' owners
    stay alive with them, so their ids stay theirs).
    """
    if not written or not read:
        return
    if callable(written_names):
        written_names_of, read_names_of = written_names, read_names
    else:
        written_names_of, read_names_of = (lambda: written_names), (lambda: read_names)
    if isinstance(written[0], _NDARRAY):
        if owned is None:
            owned = owners(written)
        for j, r in enumerate(read):
            for i in owned.get(_root(r), ()):
                if ranges_overlap(written[i], r):
                    raise ValueError(f"{fname}: {read_names_of()[j]} shares memory with "
                                     f"{written_names_of()[i]}, which the step writes; pass "
                                     "gradients in their own memory")
        return
    written_names, read_names = written_names_of(), read_names_of()
    no_overlap_among(fname, "parameters, their state and the gradients", written + read,
                     written_names + read_names)


def _converted(fname, names, values, kinds):
    for name, value, kind in zip(names, values, kinds, strict=True):
        if kind == "other":
            raise TypeError(
                f"{fname}: {name} must be a NumPy or CuPy array (or a tensor that supports "
                f"DLPack), not {type(value).__name__}; convert it once with np.asarray and "
                "keep the array, since the update is made in place"
            )
        yield from_dlpack_storage(fname, name, value) if kind == "dlpack" else (value, None)


def _storage(value, given: str | None) -> str | None:
    return given if given is not None else dtypes.storage_name(value.dtype)


def arrays(fname: str, names: tuple[str, ...], values: tuple, writes: tuple[str, ...],
           backend: str | None, master=None, stochastic: bool = False) -> tuple:
    """Check the arrays of one call; return ``(backend_module, arrays, signature)``.

    All arrays: NumPy or CuPy (or DLPack tensors, viewed without a copy), dtypes
    that :func:`fusedopt.kernels.dtypes.signature` allows, one shape,
    C-contiguous, on one device, no two overlapping, written ones writeable.
    ``master`` (optional) is a float32 copy of a 16-bit parameter, appended to
    the arrays. 16-bit arrays are returned as views of their bit patterns
    (``uint16``), as the kernels take them.
    """
    if master is None and _plain_numpy_ok(values, names, writes):
        if backend is None or backend == "numba":  # the Numba drivers check overlap, free
            key = (names, values[0].dtype)
            signature = _HOMOGENEOUS.get(key)
            if signature is None:
                signature = _HOMOGENEOUS[key] = dtypes.homogeneous(names, values[0].dtype)
            return backends.get("numba"), values, signature
        backend = backend_for(fname, "numpy", backend)
        _no_overlap(fname, names, values)
        return backends.get(backend), values, dtypes.homogeneous(names, values[0].dtype)
    if master is None and _plain_cupy_ok(values):
        return _cupy_fast(fname, names, values, backend)
    rule_names, rule_writes = names, writes
    if master is not None:
        values, names, writes = (*values, master), (*names, "master"), (*writes, "master")
    kinds = [array_kind(v) for v in values]
    given: list[str | None] = [None] * len(values)
    if "dlpack" in kinds or "other" in kinds:
        pairs = list(_converted(fname, names, values, kinds))
        values, given = tuple(v for v, _ in pairs), [g for _, g in pairs]
        kinds = [array_kind(v) for v in values]
    values = tuple(as_base_array(v) if k == "numpy" else v
                   for v, k in zip(values, kinds, strict=True))
    first, first_name, kind = values[0], names[0], kinds[0]
    shape = first.shape
    for name, k in zip(names, kinds, strict=True):
        if k != kind:
            raise TypeError(f"{fname}: {name} is a {k} array but {first_name} is a {kind} "
                            "array; all arrays of one call live on one device")
    storage = [_storage(v, g) for v, g in zip(values, given, strict=True)]
    shown = [s or v.dtype for v, s in zip(values, storage, strict=True)]
    n = len(rule_names)
    try:
        signature = dtypes.signature(rule_names, tuple(s or v.dtype for v, s in
                                                       zip(values[:n], storage[:n], strict=True)),
                                     writes=rule_writes, master=master is not None,
                                     stochastic=stochastic)
    except DtypeError as exc:
        raise TypeError(f"{fname}: {exc}") from None
    if master is not None and storage[-1] != "float32":
        raise TypeError(f"{fname}: master has dtype {shown[-1]}; the master copy of "
                        f"{first_name} is float32")
    for name, value in zip(names, values, strict=True):
        if value.shape != shape:
            raise ValueError(f"{fname}: {name} has shape {value.shape} but {first_name} has "
                             f"{shape}; every array of one call has the same shape")
        if not value.flags.c_contiguous:
            raise ValueError(f"{fname}: {name} is not C-contiguous; pass the contiguous array "
                             "itself (a contiguous copy would be updated instead of it)")
        if kind == "numpy" and not value.flags.writeable and name in writes:
            raise ValueError(f"{fname}: {name} is read-only and is updated in place; pass a "
                             "writeable array")
    if kind == "cupy":
        device = first.device.id
        for name, value in zip(names, values, strict=True):
            if value.device.id != device:
                raise ValueError(f"{fname}: {name} is on GPU {value.device.id} but "
                                 f"{first_name} is on GPU {device}; move it with "
                                 f"cupy.cuda.Device({device}).use() and cupy.asarray")
    _no_overlap(fname, names, values)
    values = tuple(dtypes.as_bits(v, s) for v, s in zip(values, storage, strict=True))
    return backends.get(backend_for(fname, kind, backend)), values, signature


def _plain_numpy_ok(values, names, writes) -> bool:
    """True when NumPy arrays of one float dtype pass every check but overlap (the fast
    path, no messages)."""
    first = values[0]
    if type(first) is not _NDARRAY:
        return False
    dtype, shape = first.dtype, first.shape
    if dtype not in FLOAT_DTYPES:
        return False
    for name, value in zip(names, values, strict=True):
        if type(value) is not _NDARRAY:
            return False
        flags = value.flags
        if (value.dtype is not dtype or value.shape != shape or not flags.c_contiguous
                or (not flags.writeable and name in writes)):
            return False
    return True


def _plain_cupy_ok(values) -> bool:
    """True when CuPy arrays of one float dtype, shape and device, all C-contiguous (the
    GPU's fast path: every check but overlap, with no messages)."""
    first = values[0]
    t = type(first)
    if t.__module__.split(".")[0] != "cupy" or not hasattr(first, "flags"):
        return False
    dtype, shape = first.dtype, first.shape
    if dtype not in FLOAT_DTYPES:
        return False
    device = first.device.id
    for value in values:
        if (type(value) is not t or value.dtype != dtype or value.shape != shape
                or not value.flags.c_contiguous or value.device.id != device):
            return False
    return True


def _cupy_fast(fname, names, values, backend) -> tuple:
    """The checked result for :func:`_plain_cupy_ok` arrays: overlap from one address per
    array, sorted (CuPy's ``.data.ptr`` builds an object each time)."""
    spans = sorted((v.data.ptr, k) for k, v in enumerate(values) if v.size)
    nbytes = values[0].nbytes
    for (start_a, k_a), (start_b, k_b) in itertools.pairwise(spans):
        if start_b < start_a + nbytes:
            first, second = sorted((k_a, k_b))
            raise overlap_error(fname, names[first], names[second])
    return (backends.get(backend_for(fname, "cupy", backend)), values,
            dtypes.homogeneous(names, values[0].dtype))


def _no_overlap(fname, names, values):
    n = len(values)
    for i in range(n):
        for j in range(i + 1, n):
            if ranges_overlap(values[i], values[j]):
                raise overlap_error(fname, names[i], names[j])


def real(fname: str, name: str, value, lo: float | None = None, hi: float | None = None, *,
         lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite float within the given bounds, or a clear error."""
    if (type(value) is float and value - value == 0.0
            and (lo is None or value > lo or (value == lo and not lo_open))
            and (hi is None or value < hi or (value == hi and not hi_open))):
        return value  # the common case, kept cheap (x - x == 0 only when x is finite)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{fname}: {name} must be a real number, not {type(value).__name__}")
    try:
        value = float(value)
    except (OverflowError, ValueError):  # an int beyond float64's range, e.g. 10**400
        raise ValueError(f"{fname}: {name}={short(value)} is beyond float64's range; pass a "
                         "finite number") from None
    if not math.isfinite(value):
        raise ValueError(f"{fname}: {name}={value} is not finite; pass a finite number")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{fname}: {name}={value} is out of range; it must be "
                         f"{'>' if lo_open else '>='} {lo}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ValueError(f"{fname}: {name}={value} is out of range; it must be "
                         f"{'<' if hi_open else '<='} {hi}")
    return value


def beta(fname: str, name: str, value) -> float:
    """A decay rate in [0, 1)."""
    return real(fname, name, value, 0.0, 1.0, hi_open=True)


def flag(fname: str, name: str, value) -> bool:
    """A bool (NumPy bools too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fname}: {name} must be True or False, not {value!r}")
    return bool(value)


#: The largest step or epoch count: exactly representable in float64 (the host scalars
#: raise betas to it), and far beyond any training run.
MAX_COUNT = 2**53


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:12]}...({len(text)} digits)"


def count(fname: str, name: str, value, what: str, hint: str) -> int:
    """A 1-based count up to :data:`MAX_COUNT`: ``what`` it counts, a ``hint`` for messages."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{fname}: {name} must be an int ({what}), not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{fname}: {name}={value} is out of range; {hint}")
    if value > MAX_COUNT:
        raise ValueError(f"{fname}: {name}={short(value)} is out of range; it must be at most "
                         f"2**53 ({what})")
    return int(value)


def seed(fname: str, value) -> int:
    """A seed: an int in [0, 2**64)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{fname}: seed must be an int, not {type(value).__name__}")
    if not 0 <= value < 2**64:
        raise ValueError(f"{fname}: seed={short(value)} is out of range; use an int in "
                         "[0, 2**64)")
    return int(value)


def step(fname: str, value) -> int:
    """The 1-based count of the update being made."""
    return count(fname, "step", value, "the 1-based update count",
                 "the first update is step=1")


def hyperparameters(fname: str, specs: tuple[Hyper, ...], values: dict) -> dict:
    """``values`` checked against the rule's :class:`~fusedopt.kernels.registry.Hyper` specs.

    Returns the checked values (floats, bools, None) by name; the first bad one
    is a ``TypeError``/``ValueError`` naming it and its valid range. A missing
    required one is a ``TypeError``.
    """
    out = {}
    for h in specs:
        value = values.get(h.name, h.default)
        if h.required and value is h.default:
            raise TypeError(f"{fname}: missing the hyperparameter {h.name} ({h.doc})")
        if h.kind == "flag":
            out[h.name] = flag(fname, h.name, value)
        elif h.kind == "optional" and value is None:
            out[h.name] = None
        else:
            out[h.name] = real(fname, h.name, value, h.lo, h.hi, lo_open=h.lo_open,
                               hi_open=h.hi_open)
    return out


def output_dir(fname: str, name: str, path) -> str:
    """``path`` as a folder that exists and takes new files, made now if needed: checked
    before any work, so a run never ends in an error about where its results go."""
    import os
    import tempfile

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fname}: {name} must be a folder path, not {type(path).__name__}")
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"{fname}: {name}={path!r} cannot hold the output "
                         f"({exc.strerror or exc}); pass a writable folder") from None
    return path
