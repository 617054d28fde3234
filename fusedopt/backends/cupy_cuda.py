"""The ``"cupy"`` backend: CUDA kernels generated from the same scalar rules, run by CuPy.

The CUDA C++ comes from :mod:`fusedopt.backends.cuda_codegen` (``cuda_source``
is re-exported here: ``fo.backends.cupy_cuda.cuda_source(rule, dtype)``).
Kernels are compiled by ``cupy.RawKernel`` and memoised per (rule, signature,
device, variant); they launch on CuPy's current stream, with the step's scalars
passed by value: no host synchronisation, no host-to-device copy. The vector
kernel is used when every array is aligned for it. CuPy is imported only when
this backend is used.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from fusedopt import config
from fusedopt.backends import cuda_lowp
from fusedopt.backends.base import (
    NORM_SBIG,
    NORM_SSML,
    NORM_TBIG,
    NORM_TSML,
    host_scalars,
    remembered,
    rounding_words,
)
from fusedopt.backends.cuda_codegen import (
    cuda_source,
    device_function,
    function_name,
    kernel_names,
    rounded_arrays,
    rule_of,
    signature_of,
    vector_alignments,
)
from fusedopt.backends.cuda_codegen import lanes as _signature_lanes
from fusedopt.kernels.dtypes import LOW_PRECISION, Signature, storage_name
from fusedopt.kernels.registry import Rule

NAME = "cupy"

__all__ = ["cuda_source", "device_function", "function_name", "is_available", "kernel_names",
           "lanes", "launch", "launch_config", "norm_sums", "prepare", "update",
           "use_vector_kernel"]


def is_available() -> tuple[bool, str]:
    """CuPy importable and at least one CUDA device usable."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed: pip install 'fusedopt[cuda13]' (or [cuda12])"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, or a driver older than the CUDA runtime
        return False, f"CuPy {cupy.__version__} is installed but no CUDA device is usable ({exc})"
    if count == 0:
        return False, f"CuPy {cupy.__version__} is installed but there is no CUDA device"
    return True, f"CuPy {cupy.__version__}, {count} CUDA device(s)"


def lanes(dtype, rule="sgd") -> int:
    """Elements per vector access of the ``_vec`` kernel for ``dtype`` (every array)."""
    rule = rule_of(rule)
    return _signature_lanes(signature_of(rule, dtype))


def use_vector_kernel(pointers, alignments=None) -> bool:
    """Whether every array is aligned for the vector kernel (16 bytes unless told)."""
    if not config.CUDA_VECTOR_LOADS:
        return False
    alignments = alignments or [16] * len(pointers)
    return all(p % a == 0 for p, a in zip(pointers, alignments, strict=True))


@cache
def _kernel(rule_name: str, sig: Signature, device_id: int, vector: bool):
    """The compiled kernel, memoised per (rule, signature, device, variant)."""
    import cupy

    source = cuda_source(rule_name, sig)
    scalar_name, vector_name = kernel_names(rule_name, sig)
    with cupy.cuda.Device(device_id):
        # --fmad=false: no fused multiply-adds, so the kernels round as the CPU drivers do
        kernel = cupy.RawKernel(source, vector_name if vector else scalar_name,
                                options=("--std=c++17", "--fmad=false"))
        kernel.compile()
    return kernel


@cache
def _multiprocessors(device_id: int) -> int:
    import cupy

    return cupy.cuda.runtime.getDeviceProperties(device_id)["multiProcessorCount"]


@cache
def _alignments(sig: Signature) -> tuple[int, ...]:
    return tuple(vector_alignments(sig))


def launch_config(n: int, vector: bool, dtype, multiprocessors: int) -> tuple[int, int]:
    """(blocks, threads) for ``n`` elements: enough blocks to fill the GPU, grid-stride beyond.

    ``dtype`` is the dtype of every array, or a signature.
    """
    threads = config.CUDA_THREADS_PER_BLOCK
    n_lanes = (_signature_lanes(dtype) if isinstance(dtype, Signature)
               else 16 // np.dtype(dtype).itemsize)
    work = -(-n // n_lanes) if vector else n
    blocks = max(1, min(-(-work // threads), multiprocessors * config.CUDA_BLOCKS_PER_SM))
    return blocks, threads


def prepare(rule: Rule, hyper: dict, signature: Signature,
            rounding: tuple[int, int] | None = None) -> tuple:
    """The step's scalars in the compute dtype, passed to the kernel by value (with
    stochastic rounding, then the index offset and the keys of the 16-bit written arrays)."""
    to = signature.compute.type
    scalars = tuple(to(s) for s in host_scalars(rule, hyper, signature))
    if signature.stochastic:
        words = rounding_words(rule, signature, rounding)
        keys = [np.uint32(words[1 + rule.arrays.index(a)]) for a in rounded_arrays(rule, signature)]
        scalars += (np.int64(words[0]), *keys)  # in the kernel's parameter order
    return scalars, signature


def launch(rule: Rule, arrays: tuple, prepared: tuple, offset: int = 0) -> None:
    """Launch ``rule`` over ``arrays`` (CuPy, one device; the master copy last) on the current
    stream; no sync. ``offset``: the first element's index for stochastic rounding."""
    scalars, sig = prepared
    if sig.stochastic and offset:  # the offset follows the rule's scalars
        at = len(rule.scalars)
        scalars = (*scalars[:at], np.int64(offset), *scalars[at + 1:])
    first = arrays[0]
    n = first.size
    if n == 0:
        return
    device_id = first.device.id
    vector = use_vector_kernel([a.data.ptr for a in arrays], _alignments(sig))
    kernel = _kernel(rule.name, sig, device_id, vector)
    blocks, threads = launch_config(n, vector, sig, _multiprocessors(device_id))
    import cupy

    with cupy.cuda.Device(device_id):
        kernel((blocks,), (threads,), (*arrays, *scalars, np.int64(n)))


@cache
def _multi_kernel(rule_name: str, sig: Signature, device_id: int, capturable: bool = False):
    """The compiled multi-tensor kernel, memoised per (rule, signature, device, kind)."""
    import cupy

    from fusedopt.backends import cuda_multi

    with cupy.cuda.Device(device_id):
        kernel = cupy.RawKernel(cuda_multi.cuda_multi_source(rule_name, sig, capturable),
                                cuda_multi.kernel_name(rule_name, sig, capturable),
                                options=("--std=c++17", "--fmad=false"))
        kernel.compile()
    return kernel


def launch_rows(rule: Rule, rows: tuple, sizes: tuple, prepared: tuple, offsets=None,
                device_id: int = 0) -> None:
    """One launch over many tensors given by their device addresses (``rows[t]``: tensor
    ``t``'s address in each array, the master copy last), each of ``sizes[t]`` elements,
    on the current stream; no sync. Raises ``ValueError`` before any write if a written
    array shares memory with another array of the call."""
    from fusedopt.backends import cuda_multi

    sig = prepared[1]
    cuda_multi.launch_rows(rule, rows, sizes, prepared, offsets, device_id,
                           _multi_kernel(rule.name, sig, device_id), _multiprocessors(device_id))


def launch_capturable(rule: Rule, rows: tuple, sizes: tuple, sig: Signature, scalars: int,
                      skip: int, device_id: int = 0) -> None:
    """:func:`launch_rows` with the scalars and a skip flag read from device memory at the
    addresses ``scalars`` and ``skip`` (see
    :func:`fusedopt.backends.cuda_multi.cuda_multi_source`): nothing of the step is read on
    the host, so the launch can be captured in a CUDA graph and replayed."""
    from fusedopt.backends import cuda_multi

    cuda_multi.launch_capturable(rule, rows, sizes, sig, scalars, skip, device_id,
                                 _multi_kernel(rule.name, sig, device_id, True),
                                 _multiprocessors(device_id))


def launch_many(rule: Rule, arrays_list: list, prepared: tuple, offsets=None) -> None:
    """:func:`launch` over every tuple of ``arrays_list`` (CuPy arrays on one device) in one
    launch of the multi-tensor kernel."""
    rows = tuple(tuple(a.data.ptr for a in arrays) for arrays in arrays_list)
    launch_rows(rule, rows, tuple(arrays[0].size for arrays in arrays_list), prepared, offsets,
                arrays_list[0][0].device.id)


_PREPARED: dict[tuple, tuple] = {}


def update(rule: Rule, arrays: tuple, hyper: dict, signature: Signature,
           rounding: tuple[int, int] | None = None, offset: int = 0) -> None:
    """Launch ``rule`` over ``arrays`` (checked CuPy arrays) on the current stream; the
    scalars of the last few hyperparameter sets are kept (a trainer's per-tensor calls of
    one step share them)."""
    if rounding is not None:
        launch(rule, arrays, prepare(rule, hyper, signature, rounding), offset)
        return
    launch(rule, arrays, remembered(_PREPARED, prepare, rule, hyper, signature), offset)


@cache
def _norm_kernels():
    """Reductions to the accumulators of :func:`fusedopt.backends.base.norm_from_sums`."""
    import cupy

    def reduction(map_expr: str, name: str):
        return cupy.ReductionKernel("T x", "float64 total", map_expr, "a + b", "total = a", "0",
                                    name)

    med = "(double)x * (double)x"
    a = "fabs((double)x)"

    def decoded(load: str, name: str):
        return cupy.ReductionKernel("uint16 x", "float64 total",
                                    f"(double){load}(x) * (double){load}(x)", "a + b",
                                    "total = a", "0", name, preamble=cuda_lowp.HELPERS)

    return {
        "bfloat16": decoded("fusedopt_load_bf16", "fusedopt_sum_of_squares_bf16"),
        "float16": decoded("fusedopt_load_f16", "fusedopt_sum_of_squares_f16"),
        "sum": reduction(med, "fusedopt_sum_of_squares"),
        "big": reduction(f"({a} > {NORM_TBIG!r} ? ({a} * {NORM_SBIG!r}) * ({a} * {NORM_SBIG!r})"
                         " : 0.0)", "fusedopt_norm_big"),
        "med": reduction(f"(({a} > {NORM_TBIG!r} || {a} < {NORM_TSML!r}) ? 0.0 : {med})",
                         "fusedopt_norm_med"),
        "small": reduction(f"({a} < {NORM_TSML!r} ? ({a} * {NORM_SSML!r}) * ({a} * {NORM_SSML!r})"
                           " : 0.0)", "fusedopt_norm_small"),
    }


@cache
def _norm_multi_kernel(storage: str, device_id: int):
    """The compiled multi-tensor norm kernel, memoised per (storage, device)."""
    import cupy

    from fusedopt.backends import cuda_multi

    with cupy.cuda.Device(device_id):
        kernel = cupy.RawKernel(cuda_multi.norm_source(storage),
                                cuda_multi.norm_kernel_name(storage),
                                options=("--std=c++17", "--fmad=false"))
        kernel.compile()
    return kernel


def norm_sums_many(arrays: list, storages: list) -> tuple:
    """:func:`norm_sums` of all ``arrays`` together (their storage names in ``storages``),
    in one launch per storage instead of one reduction (three for float64) per array:
    0-d device arrays, floats where a sum is known to be 0; no sync."""
    from fusedopt.backends import cuda_multi

    device_id = arrays[0].device.id
    rows: dict[str, tuple[list, list]] = {}
    for array, storage in zip(arrays, storages, strict=True):
        storage = storage or storage_name(array.dtype)
        found = rows.setdefault(storage, ([], []))
        found[0].append((array.data.ptr,))
        found[1].append(array.size)
    total = None
    for storage, (addresses, sizes) in rows.items():
        sums = cuda_multi.launch_norm_sums(tuple(addresses), tuple(sizes), storage, device_id,
                                           _norm_multi_kernel(storage, device_id),
                                           _multiprocessors(device_id))
        if sums is not None:
            total = sums if total is None else total + sums
    if total is None:
        return 0.0, 0.0, 0.0
    if "float64" not in rows:  # only float64 has big or small parts
        return 0.0, total[1], 0.0
    return total[0], total[1], total[2]


def norm_sums(array, storage: str | None = None) -> tuple:
    """The accumulators of :func:`fusedopt.backends.base.norm_from_sums` as 0-d device arrays
    (no host synchronisation until read). float32 arrays: one read, the plain float64 sum
    (it cannot overflow); float64 arrays: Blue's three ranges (three reads)."""
    import cupy

    kernels = _norm_kernels()
    flat = array.reshape(-1)
    with cupy.cuda.Device(array.device.id):
        if storage in LOW_PRECISION:  # bit patterns: squares of the decoded values
            return 0.0, kernels[storage](flat), 0.0
        if flat.dtype != np.float64:
            return 0.0, kernels["sum"](flat), 0.0
        return kernels["big"](flat), kernels["med"](flat), kernels["small"](flat)
