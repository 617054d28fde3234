"""Which backend updates which arrays: decided from the arrays' types, never by importing CuPy.

NumPy arrays go to ``"numba"``, CuPy arrays to ``"cupy"``; a tensor of another
library that speaks DLPack (torch) is first viewed, without a copy, as a NumPy
array (CPU) or a CuPy array (CUDA). ``backend=`` can force ``"numpy"`` (the
reference) or a backend that matches the arrays; a mismatch is an error, never
a silent fallback.
"""

from __future__ import annotations

import numpy as np

NAMES: tuple[str, ...] = ("numpy", "numba", "cupy")
_NDARRAY = np.ndarray


def array_kind(x) -> str:
    """``"numpy"``, ``"cupy"``, ``"dlpack"`` (another library's tensor) or ``"other"``.

    Decided from the type alone: CuPy is never imported to find out.
    """
    t = type(x)
    if t is _NDARRAY:
        return "numpy"
    if t.__module__.split(".")[0] == "cupy" and hasattr(x, "flags"):  # not cupyx.sparse
        return "cupy"
    if isinstance(x, _NDARRAY):
        return "numpy"
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        return "dlpack"
    return "other"


def as_base_array(x):
    """A plain ``np.ndarray`` view of an ndarray subclass (``np.matrix`` flattens to 2-D, and
    a subclass's own methods must not run inside the kernels); anything else unchanged."""
    if isinstance(x, _NDARRAY) and type(x) is not _NDARRAY:
        return x.view(_NDARRAY)
    return x


def from_dlpack_storage(fname: str, name: str, x) -> tuple:
    """``(array, storage)``: a zero-copy NumPy or CuPy view of another library's tensor, and
    its storage dtype's name where the array's dtype does not say it.

    A torch bfloat16 tensor (which NumPy and CuPy cannot type) is bit-cast to int16
    first and comes back as its 16-bit patterns (``uint16``) with storage
    ``"bfloat16"``; every other tensor comes back with ``None``.
    """
    if type(x).__module__.split(".")[0] == "torch" and str(getattr(x, "dtype", "")) \
            == "torch.bfloat16":
        import torch

        return from_dlpack(fname, name, x.view(torch.int16)).view(np.uint16), "bfloat16"
    return from_dlpack(fname, name, x), None


def from_dlpack(fname: str, name: str, x):
    """A zero-copy NumPy or CuPy view of another library's tensor (e.g. torch), via DLPack."""
    device_type = x.__dlpack_device__()[0]
    try:
        if device_type == 1:  # kDLCPU
            return np.from_dlpack(x)
        if device_type in (2, 3, 13):  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
            try:
                import cupy
            except ImportError as exc:
                raise TypeError(
                    f"{fname}: {name} is a CUDA tensor, and CUDA arrays need CuPy: "
                    "pip install 'fusedopt[cuda13]' (or [cuda12])"
                ) from exc
            return cupy.from_dlpack(x)
    except (BufferError, RuntimeError, ValueError) as exc:
        raise TypeError(
            f"{fname}: {name} ({type(x).__name__}) cannot be shared through DLPack: {exc}. "
            "For a torch parameter pass param.detach() (it shares memory)"
        ) from exc
    raise TypeError(f"{fname}: {name} lives on DLPack device type {device_type}, "
                    "which fusedopt does not run on (CPU and CUDA only)")


def backend_for(fname: str, kind: str, backend: str | None) -> str:
    """The backend name for arrays of ``kind`` (``"numpy"``/``"cupy"``), or a named error."""
    if backend is None:
        return "numba" if kind == "numpy" else "cupy"
    if backend not in NAMES:
        raise ValueError(f"{fname}: backend={backend!r} is not a backend; choose one of "
                         f"{list(NAMES)} or None (pick by array type)")
    if (backend == "numba" and kind == "cupy") or (backend == "cupy" and kind == "numpy"):
        where = "the GPU" if kind == "cupy" else "the CPU"
        raise ValueError(f"{fname}: backend={backend!r} cannot update {kind} arrays (they are "
                         f"on {where}); use backend=None to pick by array type")
    return backend
