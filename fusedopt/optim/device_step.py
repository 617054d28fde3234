"""The capturable step of :mod:`fusedopt.optim` (``capturable=True``): no host sync.

The default step reads the gradients' norm on the host (one sync) to clip it and to skip a
non-finite step, and counts its steps on the host. The capturable step keeps all of it on
the device:

1. the norm accumulators (:func:`~fusedopt.backends.base.norm_from_sums`' three sums, one
   reduction per gradient) stay device arrays; the norm, the clip factor
   ``min(1, max_grad_norm / (norm + 1e-6))`` and the skip flag (a NaN or inf among them,
   with ``nonfinite="skip"``) are computed from them on the device;
2. per launch, the rule's scalars are computed on the device by the rule's own
   ``host_scalars`` (:class:`~fusedopt.kernels.registry.Rule`'s ``device_scalars``), with
   the step taken from the device count of applied steps and the clip factor in
   ``grad_scale``;
3. the capturable kernel (:func:`fusedopt.backends.cuda_multi.cuda_multi_source`; on the
   CPU its Numba twin) reads them and returns before any write when the skip flag is set;
4. the device counters advance: applied steps by ``1 - skip``, skipped steps by ``skip``.

The host learns nothing of the step: :attr:`~fusedopt.optim.Optimizer.step_count` and
``skipped_steps`` read the device counters when asked (a sync), ``last_grad_norm`` is a
0-d device array, and a ``by="step"`` schedule is evaluated at the number of ``step()``
calls (a skipped step still counts, as a torch scheduler stepped every iteration).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict

from fusedopt import config
from fusedopt.backends.base import NORM_SBIG, NORM_SSML, ScalarRangeError, check_scalars

#: index of each counter in the optimizer's device counters
APPLIED, SKIPPED = 0, 1


def refuse(name: str, rules, *, nonfinite, stochastic_rounding: bool) -> None:
    """A ``ValueError`` for what a capturable step cannot do, named."""
    for rule in rules:
        if not rule.device_scalars:
            raise ValueError(f"{name}: capturable=True is not supported with the rule "
                             f"{rule.name!r}: its step scalars are computed on the host; "
                             "leave capturable=False")
    if nonfinite == "raise":
        raise ValueError(f"{name}: capturable=True cannot raise on a non-finite gradient "
                         "(the host never sees it); use nonfinite='skip'")
    if stochastic_rounding:
        raise ValueError(f"{name}: capturable=True cannot round stochastically (its bits "
                         "come from the host's step count); leave one of them off")


def norm(xp, big, med, small):
    """:func:`~fusedopt.backends.base.norm_from_sums` on device values: each branch as a
    ``where``, so nothing is read on the host."""
    if isinstance(big, float) and isinstance(small, float) and big == small == 0.0:
        return xp.sqrt(med)  # float32 and 16-bit gradients: one plain sum
    med_too = (med > 0.0) | (med != med)
    with_big = xp.sqrt(big + xp.where(med_too, (med * NORM_SBIG) * NORM_SBIG, 0.0)) / NORM_SBIG
    ymed, ysml = xp.sqrt(med), xp.sqrt(small) / NORM_SSML
    ymax, ymin = xp.maximum(ymed, ysml), xp.minimum(ymed, ysml)
    safe = xp.where(ymax > 0.0, ymax, 1.0)
    both = ymax * xp.sqrt(1.0 + (ymin / safe) ** 2)
    with_small = xp.where(med_too, both, ysml)
    return xp.where(big > 0.0, with_big, xp.where(small > 0.0, with_small, ymed))


def _finite(xp, value):
    return math.isfinite(value) if isinstance(value, float) else xp.isfinite(value)


def factors(xp, totals: list, max_grad_norm, nonfinite, grad_scale: float) -> tuple:
    """``(gradient factor, skip flag, norm of the scaled gradients)`` as device values from
    the three accumulators ``totals`` (floats where a backend knows them to be 0): the
    factor is ``grad_scale`` times the clip factor, as the default step computes it
    (:func:`~fusedopt.backends.base.clip_scale` where finite gradients have a norm beyond
    float64)."""
    big, med, small = totals
    med = xp.asarray(med)  # a float from the CPU backend; a device array from CuPy already
    finite = _finite(xp, big) & xp.isfinite(med) & _finite(xp, small)
    size = norm(xp, big, med, small)
    scaled = size * grad_scale
    factor = grad_scale
    if max_grad_norm is not None:
        safe_big = (big if big > 0.0 else 1.0) if isinstance(big, float) else \
            xp.where(big > 0.0, big, 1.0)
        beyond = xp.where(xp.isfinite(size), max_grad_norm / (size + 1e-6),
                          max_grad_norm * (NORM_SBIG / xp.sqrt(safe_big))) / grad_scale
        clip = xp.where(xp.isfinite(scaled), max_grad_norm / (scaled + 1e-6), beyond)
        factor = xp.where(finite & (scaled + 1e-6 > max_grad_norm), clip * grad_scale,
                          grad_scale)
    skip = (~finite if nonfinite == "skip" else xp.zeros((), dtype=bool)).astype(xp.float32)
    return factor, skip.reshape(1), scaled


_lock = threading.Lock()
_kept: OrderedDict = OrderedDict()  # key -> a small device array made once


def kept(key: tuple, make):
    """``make()``, kept under ``key`` (the last ``config.MULTI_TENSOR_TABLES``): the constant
    part of a step's scalars is uploaded once, by the warm-up step, not under a capture."""
    with _lock:
        found = _kept.get(key)
        if found is not None:
            _kept.move_to_end(key)
            return found
    found = make()
    with _lock:
        _kept[key] = found
        while len(_kept) > config.MULTI_TENSOR_TABLES:
            _kept.popitem(last=False)
    return found


def scalar_rows(xp, name: str, rule, hyper: dict, signature, applied, factor, count: int,
                device=None):
    """``(count, len(rule.scalars))`` rows in the compute dtype, on the device: the rule's
    scalars at step ``applied + 1`` (``applied``: the device count) with ``grad_scale =
    factor``, one row per tensor. The constant part is uploaded once."""
    arguments = dict(hyper, grad_scale=factor)
    if rule.needs_step:
        arguments["step"] = applied + 1.0
    values = rule.host_scalars(**arguments)
    try:
        check_scalars(rule, arguments, values, signature)
    except ScalarRangeError as exc:
        raise ValueError(f"{name}: {exc}") from None
    varying = [k for k, v in enumerate(values) if type(v) not in (float, int)]  # arrays
    constants = tuple(0.0 if k in varying else float(v) for k, v in enumerate(values))
    row = kept((xp.__name__, constants, device),
               lambda: xp.asarray(constants, dtype=xp.float64))
    if varying:
        row = row.copy()
        for k in varying:
            row[k:k + 1] = values[k].reshape(1)  # an array copy, on the device
    return xp.ascontiguousarray(xp.broadcast_to(row.astype(signature.compute),
                                                (count, len(values))))


def counters(xp, groups) -> object:
    """The device counters ``[applied, skipped]`` (float64, exact to 2**53) on the
    parameters' device."""
    if xp.__name__ == "numpy":
        return xp.zeros(2, dtype=xp.float64)
    with xp.cuda.Device(groups[0].unit_params[0].device.id):
        return xp.zeros(2, dtype=xp.float64)


def step(opt, units: list, grad_scale: float) -> None:
    """One capturable update of ``opt`` (see the module docstring) over the checked
    ``units``; returns None: whether it was applied is known on the device only."""
    import numpy as np

    from fusedopt import _checks
    from fusedopt.backends import cupy_cuda, numba_cpu  # numba only when a step runs
    from fusedopt.optim import launches

    name = f"{type(opt).__name__}.step"
    xp = opt._xp
    calls = opt._calls + 1
    if calls > _checks.MAX_COUNT:
        raise ValueError(f"{name}: the step count would pass 2**53, the largest a checkpoint "
                         "holds; start a new optimizer")
    lrs = [opt._lr(group, calls) for group in opt.groups]  # a bad schedule fails here, first
    device = None if xp is np else opt.groups[0].unit_params[0].device.id
    with contextlib.nullcontext() if device is None else xp.cuda.Device(device):
        counts = opt._device_counts
        applied = counts[APPLIED:APPLIED + 1]
        factor, skip = grad_scale, _no_skip(xp, device)
        if opt.max_grad_norm is not None or opt.nonfinite is not None:
            totals = launches.norm_totals(opt._impl, units, opt._grad_storage)
            factor, skip, opt.last_grad_norm = factors(xp, totals, opt.max_grad_norm,
                                                       opt.nonfinite, grad_scale)
        runs = opt._runs()
        # (the step and grad_scale are the device's: scalar_rows puts them in)
        hypers = [opt._launch_hyper(group, lr, 1.0, 0) for group, lr in
                  zip(opt.groups, lrs, strict=True)]
        rows = [scalar_rows(xp, name, run.rule, hypers[run.group], run.signature, applied,
                            factor, len(run.units), device) for run in runs]
        for run, scalars in zip(runs, rows, strict=True):  # everything ready: now write
            addresses = launches.grad_rows(run, units[run.group], opt._generation)
            if device is None:
                numba_cpu.launch_capturable(run.rule, addresses, run.sizes, run.signature,
                                            scalars, skip)
            else:
                cupy_cuda.launch_capturable(run.rule, addresses, run.sizes, run.signature,
                                            scalars.data.ptr, skip.data.ptr, device)
        counts += xp.concatenate([1.0 - skip, skip]).astype(xp.float64)
    opt._calls = calls


_zeros: dict = {}


def _no_skip(xp, device) -> object:
    """A float32 zero on the device: the skip flag of a step with no check."""
    key = (xp.__name__, device)
    found = _zeros.get(key)
    if found is None:
        found = _zeros[key] = xp.zeros(1, dtype=xp.float32)
    return found
