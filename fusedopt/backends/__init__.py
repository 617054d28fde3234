"""Where the math runs: a registry of backends, chosen by array type.

=========  ==============================================  ===========================
name       runs                                            picked for
=========  ==============================================  ===========================
``numpy``  the unfused NumPy reference (the test oracle)   only when asked for
``numba``  Numba-JIT fused loops on the CPU                NumPy arrays (the default)
``cupy``   CUDA kernels generated from the same rules      CuPy arrays (the default)
=========  ==============================================  ===========================

Every backend module satisfies :class:`fusedopt.backends.base.Backend`.
Dispatch (:mod:`fusedopt.backends.dispatch`) looks at ``type(array).__module__``;
it never imports CuPy to find out what an array is, so ``import fusedopt`` stays light.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fusedopt.backends.dispatch import NAMES

_MODULES = {"numpy": "numpy_ref", "numba": "numba_cpu", "cupy": "cupy_cuda"}
_SUBMODULES = (*_MODULES.values(), "cuda_codegen", "numba_codegen")
_loaded: dict[str, ModuleType] = {}


def get(name: str) -> ModuleType:
    """The backend module called ``name`` (imported on first use)."""
    module = _loaded.get(name)
    if module is None:
        if name not in _MODULES:
            raise ValueError(f"backend={name!r} is not a backend; choose one of {list(NAMES)}")
        try:
            module = importlib.import_module(f"fusedopt.backends.{_MODULES[name]}")
        except ImportError as exc:  # e.g. the CuPy backend before it is installed
            raise ValueError(f"backend={name!r} cannot be loaded: {exc}") from exc
        _loaded[name] = module
    return module


def status() -> dict[str, tuple[bool, str]]:
    """Each backend's name -> (available, why or why not)."""
    out = {}
    for name in NAMES:
        try:
            out[name] = get(name).is_available()
        except ValueError as exc:
            out[name] = (False, str(exc))
    return out


def available() -> list[str]:
    """Names of the backends that can run here, e.g. ``["numpy", "numba"]`` with no GPU."""
    return [name for name, (ok, _) in status().items() if ok]


def __getattr__(name: str) -> ModuleType:
    """``fo.backends.cupy_cuda`` (and the others) import on first use (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"fusedopt.backends.{name}")
    raise AttributeError(f"module 'fusedopt.backends' has no attribute {name!r}")


__all__ = ["NAMES", "available", "get", "status"]
