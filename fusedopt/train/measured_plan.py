"""A measured batch-size plan for any training step: a few real steps, no out-of-memory loop.

:func:`measure_batch_size` runs the user's own ``step(X_t, Y_t)`` under the
device's own memory accounting at two small batch sizes, fits a line
``peak(b) = a + k*b`` (a fixed part: the optimizer state and whatever else the
steps keep; a part per sample: batches, activations, temporaries), and solves
it for the largest batch whose peak fits what is free, less the planner's
margin. A step's peak is the larger of moments that grow with ``b`` at
different rates (the optimizer's temporaries do not grow at all), so the line
through small sizes can be too shallow: sizes are therefore probed
geometrically (at most ``GROWTH`` times the last one) with the line refitted
through the last two, and the planned size is confirmed by real steps, refitted
and measured again when it does not fit. Lightning's and Accelerate's
batch-size finders double the size until an out-of-memory error; this one
never asks for more than its line says fits, and reports how far the line was
from the confirmation.

Each kind of array is counted in its library's own accounting
(:mod:`fusedopt.train.memory_accounting`): ``tracemalloc`` for NumPy, the pool for
CuPy, ``torch.cuda`` on a GPU, and the profiler's memory events for torch on the
CPU. torch's CPU allocator keeps no statistics, so that is the only count there
is, and it is per operator: an operator's own scratch buffer is not seen.

Every count starts when :func:`measure_batch_size` is called: what is held then
(the model's parameters, usually) is outside it, what the steps allocate and
keep (lazily created optimizer state, a model's per-size workspace) is inside.
The first step is measured on its own (it compiles and creates lazy state; if it
peaks higher than the steady state, the excess is added to every prediction);
every other size runs twice, so that both the first step at a new size and the
steady state are seen. A step's window also covers the next batch being
gathered while the previous one is still held, as in ``for X_t, Y_t in loader``.

Memory allocated outside the accounting (Numba's own arrays, a C extension's
``malloc``) is not counted. The steps train the model: plan on a fresh model,
or before training.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral

from fusedopt import _checks, config
from fusedopt.train.memory_accounting import ACCOUNTING, free_bytes, oom_errors

GROWTH = 8  # a probe is at most this many times the last: a line is never stretched far
REFITS = 4  # confirmations that may refit the line before the plan falls back to a measured size


@dataclass
class MeasuredPlan:
    """The measured plan. Byte counts are beyond what was held when the plan started."""

    batch_size: int
    fits: bool
    device: str
    accounting: str
    measured: tuple[tuple[int, int], ...]  # (batch size, peak bytes), in the order run
    fixed_bytes: int  # a of the last line, peak(b) = a + k*b
    bytes_per_sample: float  # k
    available_bytes: int  # free when the plan started
    usable_bytes: int  # available less the margin, or memory_limit
    predicted_peak: int  # the last line at batch_size
    confirmed_peak: int | None  # measured at batch_size
    extrapolation_error: float | None  # confirmed / predicted - 1
    first_extrapolation_error: float | None  # the same for the first size confirmed
    reason: str

    def table(self) -> str:
        """The plan in a few lines of text."""
        if self.confirmed_peak is None:
            confirmed = "not run"
        else:
            confirmed = (f"{self.confirmed_peak:,} bytes ({self.extrapolation_error:+.1%} from "
                         "the line)")
        return "\n".join([
            f"batch size: {self.batch_size} ({'fits' if self.fits else 'does NOT fit'}; "
            f"{self.device}, measured with {self.accounting})",
            "measured peaks: " + ", ".join(f"b={b}: {p:,}" for b, p in self.measured),
            f"line: peak(b) = {self.fixed_bytes:,} + {self.bytes_per_sample:,.0f} b bytes",
            f"usable: {self.usable_bytes:,} bytes of {self.available_bytes:,} free",
            f"predicted peak: {self.predicted_peak:,} bytes; confirmed: {confirmed}",
            f"why: {self.reason}"])


# ------------------------------------------------------------------ checks
def _kind(f: str, name: str, A) -> str:
    if type(A).__module__.split(".")[0] == "torch" and hasattr(A, "is_cuda"):
        if str(getattr(A, "layout", "torch.strided")) != "torch.strided":
            raise TypeError(f"{f}: {name} is a {A.layout} torch tensor; pass a dense one "
                            f"({name}.to_dense())")
        return "torch-cuda" if A.is_cuda else "torch-cpu"
    kind = _checks.array_kind(A)
    if kind not in ("numpy", "cupy"):
        raise TypeError(f"{f}: {name} must be a NumPy, CuPy or torch array, not "
                        f"{type(A).__name__}")
    return kind


def _samples(A, axis: int) -> int:
    return int(A.shape[axis if A.ndim > 1 else 0]) if A.ndim else 0


def _batch(A, b: int, axis: int, kind: str):
    """The first ``b`` samples of ``A`` as a new contiguous array, as a data loader makes."""
    if A is None:
        return None
    part = A[:, :b] if axis == 1 and A.ndim > 1 else A[:b]
    return part.clone(memory_format=_contiguous()) if kind.startswith("torch") else part.copy()


def _contiguous():
    import torch

    return torch.contiguous_format



def _line(points: dict[int, int], usable: int) -> tuple[float, float]:
    """``(a, k)`` of the line through the two measured sizes that bracket the usable bytes.

    ``points`` maps sizes to peaks. The peak is convex in ``b`` (the larger of
    lines), so a line through two sizes is above it between them and below it
    beyond them: the bracketing pair is the safe one, else the last two sizes.
    """
    sizes = sorted(points)
    over = next((i for i, b in enumerate(sizes) if points[b] > usable), len(sizes))
    i = min(max(over, 1), len(sizes) - 1)
    (b1, p1), (b2, p2) = (sizes[i - 1], points[sizes[i - 1]]), (sizes[i], points[sizes[i]])
    k = max((p2 - p1) / (b2 - b1), 1.0)  # at least a byte a sample: the solve is bounded
    return p2 - k * b2, k


def measure_batch_size(step: Callable, X, Y=None, *, sizes: tuple[int, int] = (8, 64),
                       sample_axis: int = 1, memory_limit: int | None = None,
                       max_batch_size: int | None = None, confirm: bool = True
                       ) -> MeasuredPlan:
    """The largest batch size whose measured training step fits in memory, for any ``step``.

    With ``peak(b)`` the most memory allocated, from the call on, while a step
    at batch size ``b`` runs (and the next batch is gathered)::

        peak(b) ~ a + k b          through two measured sizes (sizes, then probes)
        b*      = floor((usable - a) / k),  at most max_batch_size and the samples
        usable  = (1 - PLANNER_MARGIN_FRACTION) * free    (or memory_limit)

    Sizes beyond ``GROWTH`` times the last measured one are probed first;
    ``peak(b*)`` is then measured (``confirm``) and, when over ``usable``, the
    line is refitted through the sizes around it and solved again, at most
    ``REFITS`` times. The steps train your model: plan on a fresh model.

    Args:
        step: ``step(X_t, Y_t)`` (``step(X_t)`` when ``Y`` is None): one training step
            of your model and optimizer on a mini-batch.
        X, Y: the training data, NumPy, CuPy or torch (CPU or CUDA), the same kind;
            a batch is a copy of the first ``b`` samples along ``sample_axis``.
        sizes: the first two batch sizes to measure, small, the second larger.
        sample_axis: 1 for samples as columns (the lecture's ``X: (n_x, m)``), 0 for rows.
            A one-dimensional ``Y`` (class labels) is cut along its only axis.
        memory_limit: bytes the training may allocate beyond what is held at the call.
        max_batch_size: the largest size to consider (default: the number of samples).
        confirm: measure real steps at the planned size (recommended).

    Returns:
        A :class:`MeasuredPlan`; ``batch_size`` 0 when not even one sample fits.
    """
    f = "measure_batch_size"
    if not callable(step):
        raise TypeError(f"{f}: step must be callable as step(X_t, Y_t), or step(X_t) without Y")
    if isinstance(sample_axis, bool) or not isinstance(sample_axis, Integral):
        raise TypeError(f"{f}: sample_axis must be the int 0 or 1, not {sample_axis!r}")
    if sample_axis not in (0, 1):
        raise ValueError(f"{f}: sample_axis={sample_axis!r}; use 1 (samples as columns, "
                         "X: (n_x, m)) or 0 (samples as rows)")
    kind = _kind(f, "X", X)
    m = _samples(X, sample_axis)
    if m < 2:
        raise ValueError(f"{f}: X has shape {tuple(X.shape)}: fewer than 2 samples along "
                         f"sample_axis={sample_axis}")
    if Y is not None:
        if _kind(f, "Y", Y) != kind:
            raise TypeError(f"{f}: X is a {kind} array and Y a {_kind(f, 'Y', Y)} one; pass "
                            "both on the same device and from the same library")
        if _samples(Y, sample_axis) != m:
            raise ValueError(f"{f}: Y has shape {tuple(Y.shape)} and X {tuple(X.shape)}; they "
                             f"must hold the same number of samples along sample_axis")
    try:
        small, large = sizes
    except (TypeError, ValueError):
        raise TypeError(f"{f}: sizes must be two batch sizes, e.g. (8, 64)") from None
    small = _checks.count(f, "sizes[0]", small, "a batch size", "use at least 1")
    large = _checks.count(f, "sizes[1]", large, "a batch size", "use at least 2")
    if not small < large <= m:
        raise ValueError(f"{f}: sizes=({small}, {large}); the second must be larger than the "
                         f"first and at most the {m} samples")
    cap = m
    if max_batch_size is not None:
        cap = min(m, _checks.count(f, "max_batch_size", max_batch_size, "a batch size",
                                   "use at least 2"))
        if cap < large:  # no step may run above the cap, the measured ones included
            raise ValueError(f"{f}: max_batch_size={cap} is below sizes[1]={large}; pass sizes "
                             f"at most the cap, e.g. sizes=({max(1, cap // 8)}, {cap})")
    if memory_limit is not None:
        memory_limit = int(_checks.real(f, "memory_limit", memory_limit, 1.0))  # whole bytes
    if not isinstance(confirm, bool):
        raise TypeError(f"{f}: confirm must be True or False")

    y_axis = sample_axis if Y is not None and Y.ndim > 1 else 0

    def run(b: int) -> Callable[[], None]:
        def one_step():
            X_t, Y_t = _batch(X, b, sample_axis, kind), _batch(Y, b, y_axis, kind)
            step(X_t) if Y is None else step(X_t, Y_t)
            # the loop gathers the next batch while this one is still held
            _next = (_batch(X, b, sample_axis, kind), _batch(Y, b, y_axis, kind))
            del X_t, Y_t, _next
        return one_step

    gc.collect()
    with ACCOUNTING[kind]() as account:
        def twice(b: int) -> int:  # the first step at a size, and the steady state
            return max(account.peak(run(b)), account.peak(run(b)))

        first = account.peak(run(small))  # compiles, creates lazy optimizer state
        raw = {small: account.peak(run(small)), large: twice(large)}
        excess = max(0, first - raw[small])
        available = free_bytes(kind) + account.current()  # free when the plan started
        usable = (memory_limit if memory_limit is not None
                  else int(available * (1 - config.PLANNER_MARGIN_FRACTION)))
        ooms: list[str] = []  # sizes that raised an out-of-memory error
        errors: dict[int, float] = {}  # measured / predicted - 1, by size

        def solve() -> tuple[float, float, int]:
            a, k = _line({b: p + excess for b, p in raw.items()}, usable)
            return a, k, min(cap, max(0, math.floor((usable - a) / k)))

        def attempt(b: int, predicted: float | None) -> bool:
            """Measure ``b``; False when it ran out of memory (nothing larger is tried)."""
            nonlocal cap
            try:
                raw[b] = twice(b)
            except oom_errors() as exc:
                ooms.append(f"b={b} ran out of memory ({type(exc).__name__})")
                cap = min(cap, b - 1)
                return False
            if predicted is not None:
                errors[b] = (raw[b] + excess) / max(predicted, 1.0) - 1
            return True

        a, k, best = solve()
        while best > GROWTH * max(raw) and not ooms:  # probe before stretching the line
            attempt(GROWTH * max(raw), None)
            a, k, best = solve()

        def fitting() -> int:
            return max((b for b, p in raw.items() if p + excess <= usable and b <= cap),
                       default=0)

        refits = 0
        while confirm and refits <= REFITS:
            a, k, best = solve()
            if ooms:  # the line cannot see an out-of-memory error: bisect below it
                best = min(best, (fitting() + cap + 1) // 2)
            if best <= fitting() or best in raw:
                break
            refits += 1
            if attempt(best, a + k * best) and raw[best] + excess <= usable and not ooms:
                break
        if confirm:
            best = fitting()

        reason = ("peak(b) = a + k b through the measured sizes around the usable bytes, "
                  "solved for b")
        if best and best == cap:
            reason += f", capped at {cap} (the samples, max_batch_size, or a size that failed)"
        if ooms:
            reason += "; " + "; ".join(ooms) + ", sizes bisected below it"
        if errors and abs(next(iter(errors.values()))) > 0.05:
            reason += (f"; the first size confirmed was {next(iter(errors.values())):+.1%} from "
                       "its line, refitted through the sizes around the usable bytes")
        if best < 1:
            best = 0
            reason = (f"not even one sample fits: a step needs about {a + k:,.0f} bytes and "
                      f"{usable:,} are usable")
        confirmed = raw[best] + excess if confirm and best in raw else None
        return MeasuredPlan(
            batch_size=best, fits=best >= 1, device=kind, accounting=account.name,
            measured=tuple(raw.items()), fixed_bytes=int(a), bytes_per_sample=k,
            available_bytes=available, usable_bytes=usable,
            predicted_peak=int(a + k * max(best, 1)), confirmed_peak=confirmed,
            extrapolation_error=errors.get(best),
            first_extrapolation_error=next(iter(errors.values()), None), reason=reason)
