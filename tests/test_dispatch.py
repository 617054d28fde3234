"""Dispatch by array type, and the errors for arrays that cannot go together.

CuPy arrays are recognised by their type's module, without importing CuPy; a
stand-in type living in a ``cupy`` module lets these checks run with no GPU.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

import fusedopt as fo
from fusedopt import backends
from fusedopt._checks import array_kind


class FakeCupyArray:
    """Just enough of cupy.ndarray for the checks (never launched)."""

    def __init__(self, n=4, dtype=np.float32, device=0, ptr=1 << 20):
        self.dtype, self.shape, self.size = np.dtype(dtype), (n,), n
        self.nbytes = n * self.dtype.itemsize
        self.flags = SimpleNamespace(c_contiguous=True, writeable=True)
        self.device = SimpleNamespace(id=device)
        self.data = SimpleNamespace(ptr=ptr)


FakeCupyArray.__module__ = "cupy._core.core"


def fake_set(n=4, device=0):
    return [FakeCupyArray(n, device=device, ptr=(k + 1) << 20) for k in range(4)]


def test_array_kind_from_type_alone():
    assert array_kind(np.zeros(2)) == "numpy"
    assert array_kind(FakeCupyArray()) == "cupy"
    assert array_kind([1.0]) == "other"


def test_numpy_and_cupy_arrays_mixed_in_one_call():
    p, g, m, v = np.zeros(4, np.float32), FakeCupyArray(), np.zeros(4, np.float32), \
        np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="grad is a cupy array but param is a numpy array"):
        fo.adam_(p, g, m, v, step=1)
    np.testing.assert_array_equal(p, 0)


def test_arrays_on_different_gpus():
    arrays = fake_set()
    arrays[2] = FakeCupyArray(device=1, ptr=9 << 20)
    with pytest.raises(ValueError, match="exp_avg is on GPU 1 but param is on GPU 0"):
        fo.adam_(*arrays, step=1)


def test_cpu_backend_forced_on_gpu_arrays():
    with pytest.raises(ValueError, match="backend='numba' cannot update cupy arrays"):
        fo.adam_(*fake_set(), step=1, backend="numba")


def test_gpu_backend_forced_on_cpu_arrays():
    arrays = [np.zeros(4, np.float32) for _ in range(4)]
    with pytest.raises(ValueError, match="backend='cupy' cannot update numpy arrays"):
        fo.adam_(*arrays, step=1, backend="cupy")


def test_overlapping_gpu_arrays():
    arrays = fake_set()
    arrays[3] = FakeCupyArray(ptr=arrays[0].data.ptr + 8)
    with pytest.raises(ValueError, match="param and exp_avg_sq share memory"):
        fo.adam_(*arrays, step=1)


def test_cuda_tensor_without_cupy_names_the_install(monkeypatch):
    class CudaTensor:
        def __dlpack__(self, stream=None):
            raise AssertionError("not reached")

        def __dlpack_device__(self):
            return (2, 0)  # kDLCUDA, device 0

    monkeypatch.setitem(sys.modules, "cupy", None)  # as if CuPy were not installed
    with pytest.raises(TypeError, match=r"pip install 'fusedopt\[cuda13\]'"):
        fo.sgd_(CudaTensor(), CudaTensor(), lr=0.1)


def test_cupy_backend_status_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    ok, why = backends.get("cupy").is_available()
    assert not ok and "pip install 'fusedopt[cuda13]'" in why
    assert "cupy" not in backends.available()


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="choose one of"):
        backends.get("opencl")
