"""The backend interface: what every place the math runs provides.

A backend is a module (``numpy_ref``, ``numba_cpu``, ``cupy_cuda``) that
satisfies :class:`Backend` structurally. An update is two calls, so that an
optimizer prepares once per step and launches once per tensor (or arena buffer):

``prepare(rule, hyper, signature, rounding=None)``
    the step's scalars from the checked hyperparameters, computed once on the
    host, plus whatever the backend needs to launch that signature (compiled
    drivers, kernel keys, and for stochastic rounding the keys of
    :func:`rounding_words` from ``rounding = (seed, step)``); nothing is written.
``launch(rule, arrays, prepared, offset=0)``
    one fused pass over ``arrays`` in place (checked, C-contiguous, one shape,
    the dtypes of ``signature``); stochastic rounding numbers the elements from
    ``offset``, so the tensors of one model draw different bits.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fusedopt import config
from fusedopt.kernels.dtypes import Signature
from fusedopt.kernels.registry import Rule, ScalarRangeError

__all__ = ["Backend", "ScalarRangeError", "check_scalars", "clip_scale", "host_scalars",
           "norm_from_sums", "overlap_error", "rounding_words"]

_LARGEST = {np.dtype(np.float32): float(np.finfo(np.float32).max),
            np.dtype(np.float64): float(np.finfo(np.float64).max)}


@runtime_checkable
class Backend(Protocol):
    """What a backend module provides (see the module docstring)."""

    NAME: str

    def is_available(self) -> tuple[bool, str]:
        """Whether it can run here, and a sentence saying why (not)."""
        ...

    def prepare(self, rule: Rule, hyper: dict, signature: Signature,
                rounding: tuple[int, int] | None = None) -> Any:
        """The step's scalars (and launch data) for ``signature``; writes nothing."""
        ...

    def launch(self, rule: Rule, arrays: tuple, prepared: Any, offset: int = 0) -> None:
        """One fused in-place pass of ``rule`` over ``arrays`` (``offset``: the first element's
        index for stochastic rounding)."""
        ...

    def update(self, rule: Rule, arrays: tuple, hyper: dict, signature: Signature,
               rounding: tuple[int, int] | None = None, offset: int = 0) -> None:
        """``launch(rule, arrays, prepare(rule, hyper, signature, rounding), offset)``."""
        ...

    def norm_sums(self, array, storage: str | None = None) -> tuple:
        """The three scaled sums of squares of :func:`norm_from_sums` (floats, or 0-d device
        arrays on a GPU: nothing waits for the device until they are read)."""
        ...


def overlap_error(fname: str, name_a: str, name_b: str) -> ValueError:
    """The error for two arguments that share memory."""
    return ValueError(f"{fname}: {name_a} and {name_b} share memory; each argument needs its "
                      "own array (the same array passed twice?)")


def host_scalars(rule: Rule, hyper: dict, signature: Signature) -> tuple[float, ...]:
    """The rule's step scalars (float64), each checked to be finite in the compute dtype.

    A learning rate of 1e39 is a finite float64 but ``inf`` in float32, and would turn
    finite parameters into infinities: that is a :class:`ScalarRangeError` naming the
    hyperparameter (or, for a product that overflows, the scalar and the values).
    """
    values = rule.host_scalars(**hyper)
    check_scalars(rule, hyper, values, signature)
    return values


def check_scalars(rule: Rule, hyper: dict, values: tuple, signature: Signature) -> None:
    """:func:`host_scalars`' range check of ``values``; those that are device arrays (a
    capturable step's, computed on the device) are left to the device."""
    largest = _LARGEST[signature.compute]
    for value in values:
        if isinstance(value, Real) and not -largest <= value <= largest:  # NaN too
            raise ScalarRangeError(_range_message(rule, hyper, values, signature.compute))


def _range_message(rule: Rule, hyper: dict, values, compute: np.dtype) -> str:
    largest = _LARGEST[compute]
    for h in rule.hyper:
        value = hyper.get(h.name)
        if h.kind != "flag" and isinstance(value, Real) and abs(value) > largest:
            return (f"{h.name}={value!r} cannot be represented in {compute.name} (the arrays' "
                    f"compute dtype; largest {largest:.4g}); use a smaller value")
    bad = next(name for name, v in zip(rule.scalars, values, strict=True)
               if isinstance(v, Real) and not -largest <= v <= largest)
    shown = ", ".join(f"{k}={v!r}" for k, v in hyper.items() if k != "grad_scale")
    return (f"the hyperparameters ({shown}) make the step's scalar {bad} = "
            f"{dict(zip(rule.scalars, values, strict=True))[bad]!r}, which {compute.name} "
            "cannot hold; use smaller values")


def rounding_words(rule: Rule, signature: Signature, rounding: tuple[int, int] | None,
                   offset: int = 0) -> list[int]:
    """``[offset, key of each of the rule's arrays]`` for stochastic rounding.

    ``rounding`` is ``(seed, step)``; an array's key is
    :func:`fusedopt.kernels.rounding.slot_key` of its position in the rule's arrays, so a
    call draws the same bits on every backend. Keys are below 2**32 and the offset below
    2**63: the drivers take them as one int64 array.
    """
    from fusedopt.kernels.rounding import slot_key

    seed, step = rounding if rounding is not None else (0, 0)
    return [offset, *(slot_key(seed, step, slot) for slot in range(len(rule.arrays)))]


# Blue's scaled sum of squares (as LAPACK's dnrm2, Anderson 2017): float64 values are
# summed in three ranges, the large ones scaled down and the tiny ones scaled up by powers
# of two (exact), so that no finite input overflows or underflows the accumulators.
NORM_TSML = 2.0**-511  # below: squares may underflow
NORM_TBIG = 2.0**486   # above: squares (summed) may overflow
NORM_SSML = 2.0**537
NORM_SBIG = 2.0**-538


def norm_from_sums(big: float, med: float, small: float) -> float:
    """The Euclidean norm from the three accumulators (summed over any number of arrays):
    ``big = sum((x*SBIG)^2)`` for ``|x| > TBIG``, ``small = sum((x*SSML)^2)`` for
    ``|x| < TSML``, ``med = sum(x^2)`` otherwise (NaN lands in ``med`` and propagates)."""
    import math

    if big > 0.0:
        if med > 0.0 or med != med:
            big += (med * NORM_SBIG) * NORM_SBIG
        return math.sqrt(big) / NORM_SBIG
    if small > 0.0:
        if med > 0.0 or med != med:
            ymed, ysml = math.sqrt(med), math.sqrt(small) / NORM_SSML
            ymax, ymin = (ymed, ysml) if ymed >= ysml else (ysml, ymed)
            return ymax * math.sqrt(1.0 + (ymin / ymax) ** 2)
        return math.sqrt(small) / NORM_SSML
    return math.sqrt(med)


def clip_scale(max_norm: float, sums) -> float:
    """``max_norm / (norm + 1e-6)`` (torch's ``clip_grad_norm_``), from the accumulators, also
    where the norm of finite gradients is beyond float64 (then ``max_norm * SBIG/sqrt(big)``)."""
    import math

    norm = norm_from_sums(*sums)
    if math.isfinite(norm):
        return max_norm / (norm + 1e-6)
    return max_norm * (NORM_SBIG / math.sqrt(sums[0]))


def remembered(cache: dict, prepare, rule: Rule, hyper: dict, signature: Signature):
    """``prepare(rule, hyper, signature)``, kept in ``cache`` for the last few sets
    (``config.PREPARED_CACHE``): a trainer calls ``fo.<rule>_`` once per tensor with the
    same hyperparameters, and only the first call of a step needs the host arithmetic."""
    key = (id(rule), signature, *hyper.items())
    found = cache.get(key)
    if found is None or found[0] is not rule:  # (a rule registered again under a new id)
        found = (rule, prepare(rule, hyper, signature))
        if len(cache) >= config.PREPARED_CACHE:
            cache.clear()
        cache[key] = found
    return found[1]
