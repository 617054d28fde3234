"""The CUDA backend's generated code, verified without a GPU.

* Every translation unit compiles with NVRTC for sm_90 and sm_80, and its PTX
  shows what we meant: float32 kernels do no float64 math, the ``_vec`` kernels
  use 128-bit loads and stores.
* The same translation unit, compiled by the host C++ compiler behind a few
  lines of shim (``__global__``, ``threadIdx``, ``float4``...), is launched on
  the CPU by a loop over blocks and threads and checked against the float64
  oracle on Hypothesis-drawn inputs: the translator is tested on numbers, the
  grid-stride loops and the vector kernel's tail included.
"""

from __future__ import annotations

import ctypes
import re

import host_cuda
import numpy as np
import pytest
from host_cuda import HostRawKernel, aligned_empty
from hypothesis import given
from hypothesis import strategies as st
from oracle import assert_matches_oracle
from strategies import inputs

from fusedopt import config
from fusedopt.backends import cupy_cuda
from fusedopt.kernels import RULES, Rule

DTYPES = ["float32", "float64"]
CTYPES = {"float32": ctypes.c_float, "float64": ctypes.c_double}


# ------------------------------------------------------------------ NVRTC, for the GPU
@pytest.fixture(scope="module")
def nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as exc:
        pytest.skip(f"NVRTC is not available ({exc}): pip install 'fusedopt[cuda13]'")
    return nvrtc


def compile_ptx(nvrtc, source: str, arch: str) -> str:
    program = nvrtc.createProgram(source, "fusedopt.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(program, [f"-arch={arch}", "--std=c++17"])
        except nvrtc.NVRTCError as exc:
            raise AssertionError(f"NVRTC rejected the source:\n{nvrtc.getProgramLog(program)}"
                                 f"\n{source}") from exc
        ptx = nvrtc.getPTX(program)
    finally:
        nvrtc.destroyProgram(program)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule_name", list(RULES))
def test_every_kernel_compiles_with_nvrtc(nvrtc, rule_name, dtype, arch):
    ptx = compile_ptx(nvrtc, cupy_cuda.cuda_source(rule_name, dtype), arch)
    for kernel in cupy_cuda.kernel_names(rule_name, dtype):
        assert re.search(rf"\.entry {kernel}\(", ptx), f"{kernel} missing from the PTX"
    bodies = ptx.split(".entry")[1:]
    if dtype == "float32":
        # float32 stays float32: no double arithmetic or conversions anywhere.
        assert not re.search(r"\.f64\b", ptx), "float32 kernel does float64 math"
    vector_body = next(b for b in bodies if b.lstrip().startswith(
        cupy_cuda.kernel_names(rule_name, dtype)[1] + "("))
    width = "v4.f32" if dtype == "float32" else "v2.f64"
    assert re.search(rf"ld\.global(\.nc)?\.{width}", vector_body), "no 128-bit loads"
    assert re.search(rf"st\.global\.{width}", vector_body), "no 128-bit stores"


def test_cuda_source_names_bad_arguments():
    with pytest.raises(ValueError, match="rule"):
        cupy_cuda.cuda_source("no_such_rule", "float32")
    with pytest.raises(ValueError, match="int32"):
        cupy_cuda.cuda_source("adam", "int32")
    assert "fusedopt_load_f16" in cupy_cuda.cuda_source("adam", "float16")  # 16-bit storage


def test_cuda_source_is_what_the_kernel_compiles():
    """``cuda_source`` is public API: the exact text handed to cupy.RawKernel."""
    source = cupy_cuda.cuda_source("adam", np.float32)
    assert source.count('extern "C" __global__') == 2
    assert cupy_cuda.device_function("adam", "float32") in source
    assert "0.5f" not in source and "sqrtf(exp_avg_sq)" in source


# ---------------------------------------- the translator, on rules that skip registration
# (registration refuses all of these first: see test_rule_language.py)
def _rule_from(fn, arrays, writes) -> Rule:
    import inspect

    scalars = tuple(inspect.signature(fn).parameters)[len(arrays):]
    return Rule(fn.__name__, fn, lambda: (), arrays, writes, scalars, ())


def uses_power(param, grad, lr):
    return (param - lr * grad**2,)


def uses_attribute(param, grad, lr):
    import math

    return (param - lr * math.tanh(grad),)


def uses_unknown_name(param, grad, lr):
    return (param - lr * grad * undefined_scale,)  # noqa: F821


def uses_bool_value(param, grad, lr):
    return (param - lr * (grad and lr),)


def uses_conditions(param, grad, lr):
    step = lr if (grad > 0 and not param < 0) or lr > 1 else 0.0
    step = step * 2.0  # a local assigned twice
    return (param - step * grad,)


def uses_literals(param, grad, lr):
    half = 0.5
    return (param - lr * (grad * half + 2 if grad > 0 else -grad),)


@pytest.mark.parametrize("fn, words", [
    (uses_power, "Pow"), (uses_attribute, "Import"), (uses_unknown_name, "undefined_scale"),
    (uses_bool_value, "used as a value")])
def test_untranslatable_rules_are_named(fn, words):
    rule = _rule_from(fn, ("param", "grad"), ("param",))
    with pytest.raises(NotImplementedError, match=words) as info:
        cupy_cuda.device_function(rule, "float32")
    assert "line" in str(info.value) and fn.__name__ in str(info.value)


def test_conditions_and_reassigned_locals_compile(nvrtc):
    rule = _rule_from(uses_conditions, ("param", "grad"), ("param",))
    source = cupy_cuda.device_function(rule, "float32")
    assert "&&" in source and "||" in source and "float step = " in source
    wrapped = source + 'extern "C" __global__ void k() {}\n'
    compile_ptx(nvrtc, wrapped, "sm_90")


def test_literals_are_typed_to_the_compute_type():
    rule = _rule_from(uses_literals, ("param", "grad"), ("param",))
    f32 = cupy_cuda.device_function(rule, "float32")
    f64 = cupy_cuda.device_function(rule, "float64")
    assert "0.5f" in f32 and "2.0f" in f32 and "(grad > 0.0f)" in f32
    assert "0.5f" not in f64 and "2.0)" in f64


# ---------------------------------------------- the same source, compiled and run on the CPU
def run_on_host(library, rule: Rule, dtype: str, arrays, scalars, vector: bool,
                grid: int, block: int):
    kernel = cupy_cuda.kernel_names(rule, dtype)[1 if vector else 0]
    function = getattr(library, f"launch_{kernel}")
    scalar_type = CTYPES[dtype]
    function.argtypes = ([ctypes.c_uint, ctypes.c_uint] + [ctypes.c_void_p] * len(arrays)
                         + [scalar_type] * len(scalars) + [ctypes.c_longlong])
    function(grid, block, *(a.ctypes.data for a in arrays), *scalars, arrays[0].size)


@pytest.mark.parametrize("variant", ["scalar", "vector"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule_name", list(RULES))
def test_translated_kernel_matches_oracle_on_the_host(host_library, rule_name, dtype, variant):
    rule = RULES[rule_name]
    vector = variant == "vector"

    @given(inputs(rule_name), st.integers(1, 4), st.integers(1, 8))
    def check(drawn, grid, block):
        arrays64, hyper = drawn
        arrays = []
        for a in arrays64:
            out = aligned_empty(a.size, dtype)
            out[...] = a.reshape(-1)
            arrays.append(out)
        if vector:
            assert cupy_cuda.use_vector_kernel([a.ctypes.data for a in arrays])
        before64 = tuple(a.astype(np.float64).reshape(a.shape) for a in arrays)
        scalars = [np.dtype(dtype).type(s) for s in rule.host_scalars(**hyper)]
        run_on_host(host_library, rule, dtype, arrays, scalars, vector, grid, block)
        by_name = dict(zip(rule.arrays, arrays, strict=True))
        assert_matches_oracle(rule_name, before64, [np.array(by_name[w]) for w in rule.writes],
                              hyper, np.dtype(dtype))

    check()


def test_vector_kernel_only_for_aligned_arrays(monkeypatch):
    aligned = aligned_empty(10, np.float32)
    shifted = aligned_empty(10, np.float32, offset_elements=1)
    assert cupy_cuda.use_vector_kernel([aligned.ctypes.data] * 2)
    assert not cupy_cuda.use_vector_kernel([aligned.ctypes.data, shifted.ctypes.data])
    monkeypatch.setattr(config, "CUDA_VECTOR_LOADS", False)
    assert not cupy_cuda.use_vector_kernel([aligned.ctypes.data] * 2)


def test_launch_config_fills_the_gpu_then_strides():
    blocks, threads = cupy_cuda.launch_config(1000, False, np.float32, multiprocessors=132)
    assert threads == config.CUDA_THREADS_PER_BLOCK and blocks * threads >= 1000
    blocks, _ = cupy_cuda.launch_config(1 << 28, True, np.float32, multiprocessors=132)
    assert blocks == 132 * config.CUDA_BLOCKS_PER_SM
    blocks, threads = cupy_cuda.launch_config(1, True, np.float64, multiprocessors=132)
    assert blocks == 1


# ------------------------- the whole CuPy path, with the kernels launched on the host
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule_name", list(RULES))
def test_cupy_backend_end_to_end_on_the_host(host_cupy, rule_name, dtype, offset):
    """fo.<rule>_ on 'CuPy' arrays: checks, host scalars, kernel choice, launch, arguments."""
    import fusedopt as fo

    rule = RULES[rule_name]

    @given(inputs(rule_name))
    def check(drawn):
        arrays64, hyper = drawn
        host = []
        for a in arrays64:
            out = aligned_empty(a.size, dtype, offset_elements=offset).reshape(a.shape)
            out[...] = a
            host.append(out.view(host_cuda.ndarray))
        before64 = tuple(np.array(a, dtype=np.float64) for a in host)
        HostRawKernel.launches = []
        getattr(fo, rule_name + "_")(*host, **hyper)
        if host[0].size:
            (name, grid, block), = HostRawKernel.launches  # one launch, on the right kernel
            vector = offset == 0
            assert name == cupy_cuda.kernel_names(rule, dtype)[1 if vector else 0]
            assert (grid[0], block[0]) == cupy_cuda.launch_config(host[0].size, vector,
                                                                  np.dtype(dtype), 2)
        else:
            assert HostRawKernel.launches == []
        by_name = dict(zip(rule.arrays, host, strict=True))
        assert_matches_oracle(rule_name, before64, [np.array(by_name[w]) for w in rule.writes],
                              hyper, np.dtype(dtype))

    check()
