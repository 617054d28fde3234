"""Per-array storage dtypes and the compute dtype: the plumbing mixed precision builds on.

Today every array of a call has its parameter's dtype (float32 or float64), and
that is what the checks allow. Underneath, each array is described by its own
dtype: the drivers and kernels load each array into the compute dtype and store
each result back into its array's dtype. Both code generators are exercised here
on a mixed signature (float32 parameter and gradient, float64 moments, float64
compute), bypassing the checks' policy, and must agree with the oracle run in the
compute dtype.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
from host_cuda import SHIM, aligned_empty, launcher
from oracle import sample_inputs

import fusedopt as fo
from fusedopt import _checks
from fusedopt.backends import cuda_codegen, numba_codegen, numba_cpu
from fusedopt.kernels import RULES
from fusedopt.kernels.dtypes import DtypeError, Signature, compute_dtype, homogeneous, signature
from fusedopt.kernels.reference import REFERENCE

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
ADAM = RULES["adam"]
MIXED = Signature((F32, F32, F64, F64), F64)


def test_signatures_describe_each_array_and_the_compute_dtype():
    sig = homogeneous(ADAM.arrays, np.float32)
    assert sig.storage == (F32,) * 4 and sig.compute == F32 and sig.homogeneous
    assert sig.key == "f32" and homogeneous(ADAM.arrays, "float64").key == "f64"
    assert not MIXED.homogeneous and MIXED.key == "f32_f32_f64_f64__f64"
    assert compute_dtype(np.float64) == F64 and compute_dtype(np.float32) == F32
    assert signature(ADAM.arrays, [F32] * 4) is sig  # memoised


@pytest.mark.parametrize("dtypes, argument", [
    ([np.int32, F32, F32, F32], "param"),
    ([F32, F64, F32, F32], "grad"),
    ([F64, F64, F64, F32], "exp_avg_sq"),
])
def test_a_disallowed_combination_names_the_array(dtypes, argument):
    with pytest.raises(DtypeError) as info:
        signature(ADAM.arrays, dtypes)
    assert info.value.argument == argument and str(info.value).startswith(argument)
    arrays = [np.zeros(3, d) for d in dtypes]
    with pytest.raises(TypeError, match=f"^adam_: {argument} "):
        fo.adam_(*arrays, step=1)


def test_the_checks_return_the_calls_signature():
    arrays = tuple(np.zeros(3, np.float64) for _ in ADAM.arrays)
    _, _, sig = _checks.arrays("adam_", ADAM.arrays, arrays, ADAM.writes, None)
    assert sig == homogeneous(ADAM.arrays, np.float64)


def _mixed_inputs(n=257):
    arrays64, hyper = sample_inputs("adam", (n,), seed=2)
    arrays = [a.astype(d) for a, d in zip(arrays64, MIXED.storage, strict=True)]
    expected = REFERENCE["adam"](*(a.astype(np.float64) for a in arrays), **hyper)
    return arrays, hyper, expected


def _check_mixed(arrays, expected):
    p, _, m, v = arrays
    assert (p.dtype, m.dtype, v.dtype) == (F32, F64, F64)
    # computed in float64, stored: the parameter rounded once to float32, the moments exact
    np.testing.assert_array_equal(p, expected[0].astype(np.float32))
    np.testing.assert_allclose(m, expected[1], rtol=1e-14)
    np.testing.assert_allclose(v, expected[2], rtol=1e-14)


def test_numba_drivers_load_and_store_each_arrays_own_dtype():
    source = numba_codegen.driver_source(ADAM, MIXED)
    assert "np.float64(param[_i])" in source and "np.float64(exp_avg[_i])" not in source
    module = numba_cpu.in_memory_module(
        "fusedopt_mixed_test", numba_codegen.HEADER + numba_codegen.element_source(ADAM) + source)
    arrays, hyper, expected = _mixed_inputs()
    scalars = np.array(ADAM.host_scalars(**{**ADAM.defaults, **hyper}), np.float64)
    for kind in ("serial", "parallel"):
        work = [a.copy() for a in arrays]
        driver = getattr(module, numba_codegen.driver_name(ADAM, MIXED, kind))
        assert driver(*work, scalars) == 0
        _check_mixed(work, expected)


def test_the_cuda_kernels_load_and_store_each_arrays_own_dtype(tmp_path):
    source = cuda_codegen.cuda_source(ADAM, MIXED)
    assert "const float* __restrict__ grad" in source
    assert "double* __restrict__ exp_avg" in source and "(double)param[_i]" in source
    assert "fusedopt_adam_f32_f32_f64_f64__f64" in source
    assert cuda_codegen.lanes(MIXED) == 2 and cuda_codegen.vector_alignments(MIXED) == \
        [8, 8, 16, 16]
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no host C++ compiler (g++) to run the generated CUDA source")
    kernels = cuda_codegen.kernel_names(ADAM, MIXED)
    path = tmp_path / "mixed.cpp"
    path.write_text(SHIM + source + "".join(launcher(ADAM, MIXED, k) for k in kernels))
    library = tmp_path / "mixed.so"
    subprocess.run([compiler, "-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC",
                    str(path), "-o", str(library)], check=True, capture_output=True)
    lib = ctypes.CDLL(str(library))
    arrays, hyper, expected = _mixed_inputs()
    scalars = ADAM.host_scalars(**{**ADAM.defaults, **hyper})
    for kernel in kernels:
        work = [aligned_empty(a.size, a.dtype) for a in arrays]
        for w, a in zip(work, arrays, strict=True):
            w[...] = a
        launch = getattr(lib, f"launch_{kernel}")
        launch.argtypes = ([ctypes.c_uint, ctypes.c_uint] + [ctypes.c_void_p] * 4
                           + [ctypes.c_double] * len(scalars) + [ctypes.c_longlong])
        launch(2, 5, *(w.ctypes.data for w in work), *scalars, work[0].size)
        _check_mixed(work, expected)
