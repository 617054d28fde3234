"""Shared fixtures: the backends that can run here, dtypes, and Hypothesis settings."""

from __future__ import annotations

import os

import numpy as np
import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the GPU machine has no Hypothesis: its property tests are skipped there
    settings = None
    collect_ignore = ["test_rules_vs_reference.py", "test_schedules.py", "test_cuda_codegen.py"]
else:
    # The first call of each driver JIT-compiles it (or loads it from Numba's cache), so
    # per-example deadlines would measure the compiler; examples stay small instead.
    settings.register_profile("default", deadline=None, max_examples=60,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("thorough", deadline=None, max_examples=1000,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _gpu_count() -> int:
    try:
        import cupy
    except ImportError:
        return 0
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # CuPy installed without a driver or a GPU
        return 0


HAS_GPU = _gpu_count() > 0
BACKENDS = ["numpy", "numba"] + (["cupy"] if HAS_GPU else [])


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Each backend that runs here (``cupy`` only with a GPU present)."""
    return request.param


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


def xp_for(backend: str):
    """The array module a backend's arrays come from."""
    if backend == "cupy":
        import cupy

        return cupy
    return np



@pytest.fixture(scope="session")
def host_library(tmp_path_factory):
    """Every generated CUDA kernel compiled for the host (see host_cuda.py)."""
    from host_cuda import build_host_library

    library = build_host_library(tmp_path_factory.mktemp("cuda_on_host"))
    if library is None:
        pytest.skip("no host C++ compiler (g++) to run the generated CUDA source on the CPU")
    return library


@pytest.fixture
def host_cupy(host_library, monkeypatch):
    """``cupy`` replaced by a NumPy-backed module whose kernels run on the host."""
    import sys

    from host_cuda import HostRawKernel, fake_cupy

    from fusedopt.backends import cuda_multi, cupy_cuda

    module = fake_cupy(host_library)
    monkeypatch.setitem(sys.modules, "cupy", module)
    caches = (cupy_cuda._kernel, cupy_cuda._multi_kernel, cupy_cuda._multiprocessors,
              cupy_cuda._norm_kernels, cupy_cuda._norm_multi_kernel)
    for cached in caches:
        cached.cache_clear()
    HostRawKernel.launches = []
    yield module
    for cached in caches:
        cached.cache_clear()
    cuda_multi._device_tables.clear()
