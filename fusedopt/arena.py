"""``ParamArena``: each dtype's parameters in one contiguous buffer, and the gradients in another.

With the whole model in one buffer, one kernel launch updates every tensor
(peers launch once per tensor, or loop over tensor lists), and a gradient
norm, a checkpoint or an all-reduce sees one array. The trainer works on the
views: ``arena.params[i]`` and ``arena.grads[i]`` have the original shapes and
write straight into the buffers, e.g. ``np.matmul(dZ, A.T, out=arena.grads[i])``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

import numpy as np

from fusedopt import _checks
from fusedopt.kernels.dtypes import storage_name

ALIGN_BYTES = 64  # each tensor starts on a cache line (and a 16-byte CUDA vector boundary)


_LARGEST = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38,
            "float32": float(np.finfo(np.float32).max), "float64": float(np.finfo(np.float64).max)}


def _arena_dtype(name: str, dtype, kind: str | None):
    """A buffer dtype: float32, float64, float16, or bfloat16 (NumPy through ml_dtypes)."""
    text = getattr(dtype, "__name__", None) or str(dtype)
    if text == "bfloat16" or storage_name(dtype) == "bfloat16":
        if kind == "cupy":
            raise TypeError(f"ParamArena: {name}=bfloat16 on the GPU: CuPy has no bfloat16 "
                            "dtype; use float16 there, or bfloat16 on the CPU")
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError(f"ParamArena: {name}=bfloat16 needs the ml_dtypes extra: pip install "
                            "ml_dtypes (or 'fusedopt[bf16]')") from None
        return np.dtype(ml_dtypes.bfloat16)
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = None
    if dtype is None or storage_name(dtype) is None:
        raise TypeError(f"ParamArena: {name}={text} is not supported; use float32, float64, "
                        "float16 or bfloat16")
    return dtype


def _module(kind: str):
    if kind == "cupy":
        import cupy

        return cupy
    return np


def _device_of(xp, sources):
    """Allocate where the source arrays live (their GPU), or the current device."""
    import contextlib

    on_gpu = [s for s in sources if s is not None and xp is not np]
    return xp.cuda.Device(on_gpu[0].device.id) if on_gpu else contextlib.nullcontext()


def _aligned_zeros(xp, n: int, dtype: np.dtype):
    """Zeros whose first element sits on an ``ALIGN_BYTES`` boundary."""
    if xp is not np:
        return xp.zeros(n, dtype)  # CuPy's allocator already aligns to 256 bytes
    pad = ALIGN_BYTES // dtype.itemsize
    raw = np.zeros(n + pad, dtype)
    start = (-raw.ctypes.data % ALIGN_BYTES) // dtype.itemsize
    return raw[start:start + n]


def layout(shapes, dtypes) -> tuple[list[tuple[np.dtype, int, int]], dict[np.dtype, int]]:
    """Where each tensor sits: ``(dtype, offset, size)`` per tensor, and elements per dtype.

    Tensors of one dtype follow each other in order, each starting on an
    ``ALIGN_BYTES`` boundary. The memory model of the planner uses the same layout.
    """
    places, totals = [], {}
    for shape, dt in zip(shapes, dtypes, strict=True):
        dt = np.dtype(dt)
        size = math.prod(int(d) for d in shape)  # Python ints: no int64 wrap-around
        step = ALIGN_BYTES // dt.itemsize
        offset = -(-totals.get(dt, 0) // step) * step
        places.append((dt, offset, size))
        totals[dt] = offset + size
    return places, totals


def _is_shape(item) -> bool:
    if isinstance(item, Integral) and not isinstance(item, bool):
        return True
    return isinstance(item, tuple) and all(
        isinstance(d, Integral) and not isinstance(d, bool) for d in item)


class ParamArena:
    """Parameters and gradients in one contiguous buffer per dtype.

    Args:
        arrays_or_shapes: arrays (NumPy, CuPy, or tensors shared through
            DLPack; their values are copied in) or shapes (ints or tuples; the
            parameters start at zero), or a mix.
        dtype: the dtype of every tensor (float32 or float64). ``None`` keeps
            each array's own dtype, and float32 for shapes.
        xp: where shapes are allocated: ``"numpy"`` (default) or ``"cupy"``.
            Built from arrays, the arena lives where they live.

    Attributes:
        params: views of the parameter buffer(s), in the original order and shapes.
        grads: views of the gradient buffer(s), zeros to start with.
        buffers: ``dtype -> (param_buffer, grad_buffer)``, the flat buffers.
    """

    def __init__(self, arrays_or_shapes: Sequence, dtype=None, *, xp: str | None = None):
        items = list(arrays_or_shapes)
        if not items:
            raise ValueError("ParamArena: arrays_or_shapes is empty; pass the model's arrays "
                             "or their shapes")
        if dtype is not None:
            dtype = _arena_dtype("dtype", dtype, xp)
        sources, shapes, dtypes, kinds = [], [], [], set()
        for i, item in enumerate(items):
            if _is_shape(item):
                shape = (int(item),) if isinstance(item, Integral) else tuple(int(d) for d in item)
                if any(d < 0 for d in shape):
                    raise ValueError(f"ParamArena: shape {i} {shape} has a negative size")
                sources.append(None)
                shapes.append(shape)
                dtypes.append(dtype or np.dtype(np.float32))
                continue
            kind = _checks.array_kind(item)
            if kind == "dlpack":
                item, storage = _checks.from_dlpack_storage("ParamArena",
                                                            f"arrays_or_shapes[{i}]", item)
                kind = _checks.array_kind(item)
                if storage == "bfloat16":  # a torch bfloat16 tensor, as its bit patterns
                    item = item.view(_arena_dtype(f"arrays_or_shapes[{i}]", "bfloat16", kind))
            if kind == "other":
                raise TypeError(f"ParamArena: arrays_or_shapes[{i}] is a {type(item).__name__}; "
                                "pass NumPy or CuPy arrays, or shapes as tuples")
            own = np.dtype(item.dtype)
            if dtype is None and storage_name(own) is None:
                raise TypeError(f"ParamArena: arrays_or_shapes[{i}] has dtype {own}; pass "
                                "dtype=np.float32 (or float64, float16, bfloat16) to convert it")
            kinds.add(kind)
            sources.append(item)
            shapes.append(tuple(item.shape))
            dtypes.append(dtype or own)
        if len(kinds) > 1:
            raise TypeError("ParamArena: NumPy and CuPy arrays mixed; an arena lives on one "
                            "device")
        if kinds and xp is not None and xp not in kinds:
            raise ValueError(f"ParamArena: xp={xp!r} but the arrays are {kinds.pop()} arrays")
        kind = kinds.pop() if kinds else (xp or "numpy")
        if kind not in ("numpy", "cupy"):
            raise ValueError(f"ParamArena: xp={xp!r}; choose 'numpy' or 'cupy'")
        if kind == "cupy" and any(storage_name(d) == "bfloat16" for d in dtypes):
            _arena_dtype("dtype", "bfloat16", "cupy")  # the named error: CuPy has no bfloat16
        self.kind = kind
        module = _module(kind)
        if kind == "cupy":
            devices = {s.device.id for s in sources if s is not None}
            if len(devices) > 1:
                raise ValueError(f"ParamArena: the arrays are on GPUs {sorted(devices)}; an "
                                 "arena lives on one device")
        self.shapes = shapes
        self.dtypes = dtypes
        self.layout, totals = layout(shapes, dtypes)  # (dtype, offset, size) per tensor
        device = _device_of(module, sources)
        with device:
            self.buffers = {dt: (_aligned_zeros(module, n, dt), _aligned_zeros(module, n, dt))
                            for dt, n in totals.items()}
        self.params = self.views({dt: bufs[0] for dt, bufs in self.buffers.items()})
        self.grads = self.views({dt: bufs[1] for dt, bufs in self.buffers.items()})
        for i, (view, source) in enumerate(zip(self.params, sources, strict=True)):
            if source is None:
                continue
            with np.errstate(over="ignore", invalid="ignore"):  # reported below, by name
                view[...] = source  # copies (and converts the dtype where asked)
            if np.dtype(source.dtype) != view.dtype and bool(
                    (module.isinf(view) & ~module.isinf(source)).any()):
                raise ValueError(f"ParamArena: arrays_or_shapes[{i}] holds finite values beyond "
                                 f"{view.dtype}'s range (largest {_LARGEST[view.dtype.name]:.4g});"
                                 f" they would become inf: rescale them or keep "
                                 f"dtype={np.dtype(source.dtype).name}")

    def views(self, flat: dict) -> list:
        """Per-tensor views, in the original shapes, of one flat buffer per dtype."""
        return [flat[dt][offset:offset + size].reshape(shape)
                for (dt, offset, size), shape in zip(self.layout, self.shapes, strict=True)]

    def zero_grad(self) -> None:
        """Set every gradient to zero (one fill per dtype)."""
        for _, grad in self.buffers.values():
            grad.fill(0)

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def size(self) -> int:
        """Elements in all parameter buffers (alignment padding included)."""
        return sum(p.size for p, _ in self.buffers.values())

    def __repr__(self) -> str:
        per_dtype = ", ".join(f"{dt.name}: {p.size} elements" for dt, (p, _) in
                              self.buffers.items())
        return f"ParamArena({len(self)} tensors on {self.kind}; {per_dtype})"
