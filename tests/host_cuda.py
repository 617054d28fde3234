"""The CUDA backend on a machine with no GPU: the generated kernels, compiled for the host.

* :func:`build_host_library` compiles every rule's CUDA translation unit (the
  exact text of ``cuda_source``) with the host C++ compiler behind a few lines
  of shim (``__global__``, ``threadIdx``, ``float4``...), plus a launcher per
  kernel that runs each (block, thread) of a launch in turn. That is exact for
  these kernels: every thread owns its elements (no shared memory, no sync).
* :func:`fake_cupy` is a ``cupy`` module backed by NumPy whose ``RawKernel``
  launches those host kernels: fusedopt's whole CuPy path (checks, dispatch,
  arenas, optimizers, checkpoints) runs unchanged on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import subprocess
import types
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np

from fusedopt.backends import cuda_codegen, cuda_lowp, cupy_cuda
from fusedopt.kernels import RULES, Rule

DTYPES = ("float32", "float64")

SHIM = """
#include <math.h>
#include <string.h>
struct ushort4 { unsigned short x, y, z, w; };
struct ushort2 { unsigned short x, y; };
static inline unsigned int __float_as_uint(float x) { unsigned int u; memcpy(&u, &x, 4); return u; }
static inline float __uint_as_float(unsigned int u) { float x; memcpy(&x, &u, 4); return x; }
struct fusedopt_dim3 { unsigned int x, y, z; };
static fusedopt_dim3 threadIdx, blockIdx, blockDim, gridDim;
struct float4 { float x, y, z, w; };
struct float2 { float x, y; };
struct double2 { double x, y; };
#define __global__
#define __device__
#define __forceinline__ inline
"""


def launcher(rule: Rule, dtype, kernel: str) -> str:
    """C++ for ``launch_<kernel>(grid, block, <kernel's arguments>)``; ``dtype`` is one dtype
    for every array or a Signature (each array its own storage type)."""
    sig = cuda_codegen.signature_of(rule, dtype)
    params = [f"{'' if a in rule.writes else 'const '}{cuda_codegen.CTYPE[d]}* {a}"
              for a, d in zip(rule.arrays, sig.storage, strict=True)]
    names = list(rule.arrays)
    if sig.master:
        params.append("float* _master")
        names.append("_master")
    params += [f"{cuda_codegen.CTYPE[sig.compute]} {s}" for s in rule.scalars]
    names += list(rule.scalars)
    if sig.stochastic:
        keys = [f"_key_{w}" for w in cuda_codegen.rounded_arrays(rule, sig)]
        params += ["long long _offset", *(f"unsigned int {k}" for k in keys)]
        names += ["_offset", *keys]
    params.append("long long _n")
    names.append("_n")
    return (f'extern "C" void launch_{kernel}(unsigned grid, unsigned block, '
            f'{", ".join(params)}) {{\n'
            "  gridDim.x = grid; blockDim.x = block;\n"
            "  for (unsigned b = 0; b < grid; ++b)\n"
            "    for (unsigned t = 0; t < block; ++t) {\n"
            f"      blockIdx.x = b; threadIdx.x = t; {kernel}({', '.join(names)});\n"
            "    }\n}\n")


def multi_launcher(rule: Rule, dtype, capturable: bool = False) -> str:
    """C++ for ``launch_<multi kernel>(grid, block, <its arguments>)``."""
    from fusedopt.backends import cuda_multi

    sig = cuda_codegen.signature_of(rule, dtype)
    kernel = cuda_multi.kernel_name(rule, sig, capturable)
    params = cuda_multi.parameters(rule, sig, capturable)
    return (f'extern "C" void launch_{kernel}(unsigned grid, unsigned block, '
            f'{", ".join(f"{t} {n}" for t, n in params)}) {{\n'
            "  gridDim.x = grid; blockDim.x = block;\n"
            "  for (unsigned b = 0; b < grid; ++b)\n"
            "    for (unsigned t = 0; t < block; ++t) {\n"
            f"      blockIdx.x = b; threadIdx.x = t; {kernel}({', '.join(n for _, n in params)});\n"
            "    }\n}\n")


def norm_launcher(kernel: str) -> str:
    """C++ for ``launch_<norm kernel>(grid, block, table, chunks, n_chunks, partials)``."""
    return (f'extern "C" void launch_{kernel}(unsigned grid, unsigned block, '
            "const long long* _table, const long long* _chunks, long long _n_chunks, "
            "double* _partials) {\n"
            "  gridDim.x = grid; blockDim.x = block;\n"
            "  for (unsigned b = 0; b < grid; ++b)\n"
            "    for (unsigned t = 0; t < block; ++t) {\n"
            f"      blockIdx.x = b; threadIdx.x = t; {kernel}(_table, _chunks, _n_chunks, "
            "_partials);\n    }\n}\n")


def build_host_library(directory: Path) -> ctypes.CDLL | None:
    """Every rule's CUDA source compiled for the host; None without a C++ compiler."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        return None
    from fusedopt.backends import cuda_multi

    parts = [SHIM]
    for rule_name, rule in RULES.items():
        for dtype in DTYPES:
            parts.append(cupy_cuda.cuda_source(rule_name, dtype))
            parts.extend(launcher(rule, dtype, k) for k in cupy_cuda.kernel_names(rule, dtype))
            parts.append(cuda_multi.cuda_multi_source(rule_name, dtype).replace(
                cuda_codegen.device_function(rule, dtype), ""))  # defined once, above
            parts.append(multi_launcher(rule, dtype))
            parts.append(cuda_multi.cuda_multi_source(rule_name, dtype, True).replace(
                cuda_codegen.device_function(rule, dtype), ""))
            parts.append(multi_launcher(rule, dtype, True))
    helpers_done = False
    for storage in ("float32", "float64", "bfloat16", "float16"):
        text = cuda_multi.norm_source(storage)
        if storage in cupy_cuda.LOW_PRECISION:
            if helpers_done:  # defined once, with the first 16-bit kernel
                text = text.replace(cuda_lowp.HELPERS, "")
            helpers_done = True
        parts.append(text)
        parts.append(norm_launcher(cuda_multi.norm_kernel_name(storage)))
    source = directory / "kernels.cpp"
    source.write_text("\n".join(parts))
    library = directory / "kernels.so"
    # -ffp-contract=off: no fused multiply-adds the source did not ask for.
    subprocess.run([compiler, "-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC",
                    str(source), "-o", str(library)], check=True, capture_output=True)
    return ctypes.CDLL(str(library))


def aligned_empty(n: int, dtype, offset_elements: int = 0) -> np.ndarray:
    """An array starting ``offset_elements`` past a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(n * itemsize + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset_elements * itemsize
    return raw[start:start + n * itemsize].view(dtype)


class _Pointer:
    """cupy.cuda.MemoryPointer: an address, and device-to-device copies."""

    def __init__(self, ptr: int):
        self.ptr = ptr

    def copy_from_device_async(self, src, size: int, stream=None):
        ctypes.memmove(self.ptr, src.ptr, size)


class ndarray(np.ndarray):
    """NumPy memory that fusedopt takes for a CuPy array on GPU 0 (it stands in for
    cupy.ndarray, hence the lower-case name)."""

    @property
    def data(self):
        return _Pointer(self.ctypes.data)

    @property
    def device(self):
        return SimpleNamespace(id=0)

    def get(self) -> np.ndarray:
        return np.array(self)

    def set(self, host: np.ndarray) -> None:  # cupy.ndarray.set: host to device, in place
        assert host.shape == self.shape and host.dtype == self.dtype
        np.copyto(self.view(np.ndarray), host)


ndarray.__module__ = "cupy._core.core"


class HostRawKernel:
    """cupy.RawKernel, launching the host-compiled translation unit instead of a GPU."""

    launches: ClassVar[list] = []

    def __init__(self, library, source: str, name: str):
        self.library, self.source, self.name = library, source, name

    def compile(self):
        assert f'extern "C" __global__ void {self.name}(' in self.source

    def __call__(self, grid, block, args):
        converted = []
        for arg in args:
            if isinstance(arg, ndarray):
                converted.append(ctypes.c_void_p(arg.data.ptr))
            elif isinstance(arg, np.uint64):  # a device address (torch's data_ptr())
                converted.append(ctypes.c_void_p(int(arg)))
            elif isinstance(arg, np.int64):
                converted.append(ctypes.c_longlong(int(arg)))
            elif isinstance(arg, np.uint32):
                converted.append(ctypes.c_uint(int(arg)))
            elif isinstance(arg, np.float32):
                converted.append(ctypes.c_float(arg))
            elif isinstance(arg, np.float64):
                converted.append(ctypes.c_double(arg))
            else:
                raise AssertionError(f"unexpected kernel argument {type(arg).__name__}")
        HostRawKernel.launches.append((self.name, grid, block))
        getattr(self.library, f"launch_{self.name}")(ctypes.c_uint(grid[0]),
                                                      ctypes.c_uint(block[0]), *converted)


def _reduction_kernel(in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name,
                      preamble=""):
    """cupy.ReductionKernel for fusedopt's norm reductions, computed with NumPy (16-bit ones
    decode their bit patterns with fusedopt's NumPy rounding reference)."""
    from fusedopt.backends import numpy_ref

    parts = {"fusedopt_sum_of_squares": None, "fusedopt_norm_big": 0, "fusedopt_norm_med": 1,
             "fusedopt_norm_small": 2, "fusedopt_sum_of_squares_bf16": "bfloat16",
             "fusedopt_sum_of_squares_f16": "float16"}
    assert name in parts and reduce_expr == "a + b", name

    def run(x):
        x = np.asarray(x)
        if isinstance(parts[name], str):
            return np.float64(numpy_ref.norm_sums(x, parts[name])[1])
        if parts[name] is None:
            x = x.astype(np.float64)
            return np.float64(np.sum(x * x))
        return np.float64(numpy_ref.norm_sums(x)[parts[name]])

    return run


class _Event:
    """cupy.cuda.Event, timed with the host clock (the host kernels are synchronous)."""

    def record(self, stream=None):
        import time

        self.time = time.perf_counter()

    def synchronize(self):
        pass


class _Generator:
    def __init__(self, seed=None):
        self.rng = np.random.default_rng(seed)

    def standard_normal(self, size=None, dtype=np.float64):
        return self.rng.standard_normal(size).astype(dtype).view(ndarray)

    def permutation(self, n):
        return self.rng.permutation(n).view(ndarray)


class _Device(contextlib.nullcontext):
    """cupy.cuda.Device(0): a context manager, with the 'GPU's' memory."""

    def __init__(self, device_id: int = 0):
        super().__init__()
        self.id = device_id
        self.mem_info = (8 * 2**30, 16 * 2**30)  # (free, total)


class _RandomState:
    def __init__(self, seed):
        self.state = np.random.RandomState(seed)

    def permutation(self, n):
        return self.state.permutation(n).view(ndarray)


def fake_cupy(library) -> types.ModuleType:
    """A NumPy-backed ``cupy`` module: arrays are :class:`ndarray`, kernels run on the host."""
    module = types.ModuleType("cupy")
    module.__version__ = "host-emulation"
    module.ndarray = ndarray
    module.float32, module.float64 = np.float32, np.float64
    module.zeros = lambda shape, dtype=float: np.zeros(shape, dtype).view(ndarray)
    module.empty = lambda shape, dtype=float: np.empty(shape, dtype).view(ndarray)
    module.zeros_like = lambda a: np.zeros_like(a).view(ndarray)
    module.asarray = lambda a, dtype=None: np.array(a, dtype=dtype).view(ndarray)
    module.take = lambda a, index, axis=None: np.take(a, index, axis=axis).view(ndarray)
    module.ascontiguousarray = lambda a: np.ascontiguousarray(a).view(ndarray)
    # Everything else (matmul, exp, maximum, ...) is NumPy's, which keeps the subclass.
    module.__getattr__ = lambda name: getattr(np, name)
    module.RawKernel = lambda source, name, options=(): HostRawKernel(library, source, name)
    module.ReductionKernel = _reduction_kernel
    module.empty_like = lambda a: np.empty_like(a).view(ndarray)
    module.abs = lambda a, out=None: np.abs(a, out=out)
    module.uint8 = np.uint8
    module.random = SimpleNamespace(default_rng=_Generator,
                                    RandomState=lambda seed: _RandomState(seed))
    module.get_default_memory_pool = lambda: SimpleNamespace(free_all_blocks=lambda: None,
                                                             free_bytes=lambda: 0)
    module.cuda = SimpleNamespace(
        Device=_Device,
        Event=_Event,
        get_elapsed_time=lambda start, end: (end.time - start.time) * 1e3,
        get_current_stream=lambda: SimpleNamespace(synchronize=lambda: None),
        runtime=SimpleNamespace(
            getDeviceCount=lambda: 1,
            getDeviceProperties=lambda i: {"multiProcessorCount": 2,
                                           "name": b"host emulation"}))
    return module
