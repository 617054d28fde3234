"""Which mini-batch size fits, decided before anything is allocated.

The lecture's rules: with a small training set (``m <= 2000``) use batch
gradient descent; otherwise a mini-batch of 64 to 512 samples, a power of two,
and X{t}, Y{t} must fit in CPU/GPU memory. This module turns them into numbers:

* a **memory model** of pure functions: the bytes of X{t}/Y{t}, of the
  parameters, gradients and optimizer state (one slot per state array of the
  optimizer's rule, from the Rule registry: 0 for SGD, 1 for Momentum, 2 for
  Adam, 3 for AMSGrad, ...), of the activations and backward temporaries of
  :class:`fusedopt.MLP`, which it asks the MLP for (or a per-sample
  activation size for other models);
* **device probes**: free GPU memory (the driver's figure plus what CuPy's pool
  holds free) and CPU memory available to this process (``/proc/meminfo``,
  capped by a cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``);
* :func:`plan_batch_size`, which applies the rules to them, keeping a stated
  margin (``config.PLANNER_MARGIN_FRACTION``) free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np

from fusedopt import _checks, config, devices
from fusedopt.train.memory_model import (  # noqa: F401  (the model's names, as before)
    MAX_DIMENSION,
    arena_buffer_elements,
    array_bytes,
    batch_bytes,
    dataset_bytes,
    mlp_activation_bytes,
    mlp_shapes,
    parameter_bytes,
    state_slots,
    step_peak_bytes,
)
from fusedopt.train.memory_model import check_optimizer as _check_optimizer


def _dimensions(f: str, name: str, values, lo: int = 0) -> tuple[int, ...]:
    """``values`` as integer sizes in ``[lo, MAX_DIMENSION]``, or an error naming ``name``."""
    out = []
    for k, d in enumerate(values):
        if isinstance(d, bool) or not isinstance(d, Integral):
            raise TypeError(f"{f}: {name}[{k}]={d!r} is not an integer size")
        if not lo <= d <= MAX_DIMENSION:
            shown = d if abs(d) < 10**20 else f"{str(d)[:6]}... ({len(str(abs(d)))} digits)"
            raise ValueError(f"{f}: {name}[{k}]={shown} is out of range; sizes are integers "
                             f"from {lo} to 2**62")
        out.append(int(d))
    return tuple(out)


# ------------------------------------------------------------------ the plan
@dataclass
class BatchPlan:
    """The planner's answer (all sizes in bytes)."""

    batch_size: int
    fits: bool
    peak_bytes: int
    available_bytes: int
    breakdown: dict[str, int]
    max_fitting_batch_size: int
    data_fits_on_device: bool
    reason: str
    device: str = "cpu"
    margin_fraction: float = 0.0
    m: int = 0
    usable_bytes: int = 0  # what a step may use: available less the margin (and GPU overhead)
    candidates: dict[int, int] = field(default_factory=dict)  # batch size -> peak bytes

    def peak_bytes_at(self, batch_size: int) -> int | None:
        """The model's peak for another batch size (None if the plan has no model)."""
        peak = getattr(self, "_peak", None)
        if peak is None:
            return self.candidates.get(batch_size)
        return sum(peak(batch_size).values())

    def table(self) -> str:
        """The plan and its breakdown as plain text."""
        lines = [f"batch size: {self.batch_size} ({'fits' if self.fits else 'does NOT fit'} on "
                 f"the {self.device})",
                 f"peak: {_human(self.peak_bytes)} of {_human(self.available_bytes)} available "
                 f"(keeping {self.margin_fraction:.0%} free)",
                 f"largest batch that fits: {self.max_fitting_batch_size}",
                 f"whole data set resident on the device: "
                 f"{'yes' if self.data_fits_on_device else 'no'}",
                 f"why: {self.reason}", "breakdown at the chosen size:"]
        width = max(len(k) for k in self.breakdown)
        for name, n in self.breakdown.items():
            lines.append(f"  {name:<{width}}  {_human(n):>10}")
        return "\n".join(lines)


def _human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def available_memory(device: str) -> int:
    """Bytes this process can still allocate on ``device`` ("cpu" or "gpu")."""
    if device == "cpu":
        return devices.cpu_memory().available_bytes
    import cupy

    free, _ = cupy.cuda.Device().mem_info  # the current device (see plan_batch_size)
    return int(free + cupy.get_default_memory_pool().free_bytes())


def _shape_dtype(name: str, value, default_dtype=np.float32):
    """(shape, dtype) from an array, or from a (shape, dtype) / shape description."""
    f = "plan_batch_size"
    kind = _checks.array_kind(value)
    if kind in ("numpy", "cupy"):
        return tuple(value.shape), np.dtype(value.dtype), kind
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple):
        return _dimensions(f, f"{name} shape", value[0]), np.dtype(value[1]), None
    if isinstance(value, tuple) and all(isinstance(d, Integral) for d in value):
        return _dimensions(f, f"{name} shape", value), np.dtype(default_dtype), None
    raise TypeError(f"{f}: {name} must be an array, a shape, or (shape, dtype)")


def plan_batch_size(X, Y, *, layer_sizes: Sequence[int] | None = None,
                    activation_bytes_per_sample: int | None = None, optimizer: str = "adam",
                    memory_limit: int | None = None, backend: str | None = None,
                    sample_axis: int = 1, dtype=np.float32,
                    param_shapes=None, extra_bytes: int = 0,
                    precision: str = "fp32", world_size: int = 1,
                    shard_state: bool = False) -> BatchPlan:
    """Choose the mini-batch size by the lecture's rules, checked against free memory.

    Args:
        X, Y: the training set as arrays, or as shapes / ``(shape, dtype)`` (nothing
            is allocated). ``X: (n_x, m)`` with ``sample_axis=1`` (the lecture's layout).
        layer_sizes: the :class:`fusedopt.MLP` to model (``[n_x, ..., n_y]``).
        activation_bytes_per_sample: for other models, the activations and
            temporaries one sample needs (then pass ``param_shapes`` too).
        optimizer: any name of :func:`fusedopt.kernels.optimizer_names` (``"sgd"``,
            ``"adam"``, ``"amsgrad"``, ``"lion"``, ...): its state slots are its rule's.
        memory_limit: bytes to plan for instead of what the device has free.
        backend: ``"cupy"`` plans for the GPU, ``"numba"``/``"numpy"`` for the CPU;
            ``None`` (default) decides by where ``X`` lives (the CPU for shapes).
        dtype: the parameters' dtype.
        param_shapes: parameter shapes (default: those of ``layer_sizes``' MLP).
        extra_bytes: what the caller holds beside the training loop (the profiler's
            records, say), counted in every peak.
        world_size: ranks training data-parallel: the plan is one rank's memory, the
            batch size the global one (each rank takes ``ceil(b / world_size)``).
        shard_state: ZeRO-1 (``fo.Adam(..., shard_state=True)``): each rank holds 1/W
            of the optimizer state and master copy.

    Returns:
        A :class:`BatchPlan`.
    """
    f = "plan_batch_size"
    x_shape, x_dtype, x_kind = _shape_dtype("X", X)
    y_shape, y_dtype, _ = _shape_dtype("Y", Y)
    if sample_axis not in (0, 1) or len(x_shape) != 2:
        raise ValueError(f"{f}: X must be 2-D with sample_axis 0 or 1; got {x_shape}")
    if len(y_shape) not in (1, 2):
        raise ValueError(f"{f}: Y must be 1-D or 2-D; got {y_shape}")
    if backend not in (None, "numpy", "numba", "cupy"):
        raise ValueError(f"{f}: backend={backend!r}; choose 'cupy' (plan for the GPU), "
                         "'numba' or 'numpy' (the CPU), or None (where X lives)")
    m = x_shape[sample_axis]
    n_x = x_shape[1 - sample_axis]
    n_y = 1 if len(y_shape) == 1 else y_shape[1 - sample_axis]
    y_m = y_shape[0] if len(y_shape) == 1 else y_shape[sample_axis]
    if y_m != m:
        raise ValueError(f"{f}: X has {m} samples but Y has {y_m}")
    if m < 1:
        raise ValueError(f"{f}: the training set is empty")
    if (layer_sizes is None) == (activation_bytes_per_sample is None):
        raise ValueError(f"{f}: give layer_sizes (for the MLP) or activation_bytes_per_sample "
                         "(with param_shapes), one of the two")
    if layer_sizes is not None:
        layer_sizes = list(_dimensions(f, "layer_sizes", layer_sizes, lo=1))
        if len(layer_sizes) < 2 or min(layer_sizes) < 1:
            raise ValueError(f"{f}: layer_sizes={layer_sizes}; give at least [n_x, n_y], all >= 1")
        if layer_sizes[0] != n_x or layer_sizes[-1] != n_y:
            raise ValueError(f"{f}: layer_sizes {layer_sizes} must start with n_x={n_x} and "
                             f"end with n_y={n_y}")
        shapes = mlp_shapes(layer_sizes)
    else:
        if param_shapes is None:
            raise ValueError(f"{f}: with activation_bytes_per_sample, pass param_shapes")
        _checks.real(f, "activation_bytes_per_sample", activation_bytes_per_sample, 0.0)
    if param_shapes is not None:
        shapes = [_dimensions(f, f"param_shapes[{i}]", shape) for i, shape in
                  enumerate(param_shapes)]
    _check_optimizer(f, optimizer)
    extra_bytes = int(_checks.real(f, "extra_bytes", extra_bytes, 0.0))
    world_size = _checks.count(f, "world_size", world_size, "ranks",
                               "one process is world_size=1")
    shard_state = _checks.flag(f, "shard_state", shard_state)
    gpu = backend == "cupy" or (backend is None and x_kind == "cupy")
    device = "gpu" if gpu else "cpu"
    if memory_limit is not None:
        available = int(_checks.real(f, "memory_limit", memory_limit, 0.0, lo_open=True))
    elif gpu and x_kind == "cupy":
        import cupy

        with cupy.cuda.Device(X.device.id):  # the GPU the data is on
            available = available_memory(device)
    else:
        available = available_memory(device)
    margin = config.PLANNER_MARGIN_FRACTION
    usable = int(available * (1 - margin)) - (config.PLANNER_GPU_OVERHEAD_BYTES if gpu else 0)
    dataset = dataset_bytes(x_shape, x_dtype, y_shape, y_dtype)
    # The library's loop holds the whole training set where it trains. Arrays already there
    # are already out of what the device has free; otherwise (shapes, data on another
    # device, or a memory_limit to plan within) the plan must find room for them too.
    resident_already = x_kind == ("cupy" if gpu else "numpy") and memory_limit is None

    def peak(b: int) -> dict[str, int]:
        parts = step_peak_bytes(n_x=n_x, n_y=n_y, m=m, batch_size=b, shapes=shapes,
                                layer_sizes=layer_sizes,
                                activation_bytes_per_sample=activation_bytes_per_sample,
                                dtype=dtype, x_dtype=x_dtype, y_dtype=y_dtype,
                                optimizer=optimizer, gpu=gpu, precision=precision,
                                world_size=world_size, shard_state=shard_state)
        if not resident_already:
            parts["the training set X, Y"] = dataset
        if extra_bytes:
            parts["the caller's own (extra_bytes)"] = extra_bytes
        return parts

    def total(b: int) -> int:
        return sum(peak(b).values())

    # The largest b <= m that fits (peak grows with b: bisect).
    lo, hi = 0, m
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if total(mid) <= usable:
            lo = mid
        else:
            hi = mid - 1
    max_fit = lo
    candidates = {b: total(b) for b in (*config.MINIBATCH_SIZES, m) if b <= m}
    if m <= config.FULL_BATCH_MAX_SAMPLES and max_fit >= m:
        batch, reason = m, (f"m = {m} <= {config.FULL_BATCH_MAX_SAMPLES}: a small training set, "
                            "so batch gradient descent (the whole set each step) fits and is "
                            "used")
    else:
        fitting = [b for b in config.MINIBATCH_SIZES if b <= min(max_fit, m)]
        if fitting:
            batch = fitting[-1]
            why_small = (f"m = {m} > {config.FULL_BATCH_MAX_SAMPLES}" if m >
                         config.FULL_BATCH_MAX_SAMPLES else
                         f"the full batch of {m} does not fit (at most {max_fit} do)")
            reason = (f"{why_small}: the largest power of two from 64 to 512 that fits, "
                      f"{batch} (the largest that fits at all is {max_fit})")
        elif max_fit >= 1:
            batch = max_fit
            reason = (f"not even a mini-batch of 64 fits: at most {max_fit} samples per step "
                      f"fit in {_human(usable)} usable; {_human(total(64))} would be needed "
                      "for 64. Use a smaller model, a lower-precision dtype, SGD (no "
                      "optimizer state) or more memory")
        else:
            batch = 1
            reason = (f"nothing fits: the parameters, gradients, optimizer state"
                      f"{'' if resident_already else ' and the training set'} alone "
                      f"need {_human(total(1))}, more than the {_human(usable)} usable")
    breakdown = peak(batch)
    chosen = total(batch)
    # The training set is counted in every peak above: it fits wherever a step does.
    data_fits = resident_already or max_fit >= 1
    plan = BatchPlan(batch_size=batch, fits=max_fit >= batch, peak_bytes=chosen,
                     available_bytes=available, breakdown=breakdown,
                     max_fitting_batch_size=max_fit, data_fits_on_device=bool(data_fits),
                     reason=reason, device=device, margin_fraction=margin, m=m,
                     usable_bytes=usable, candidates=candidates)
    plan._peak = peak  # the memory model, for peak_bytes_at (not a field: not serialised)
    return plan
