"""The backend interface: what every place the math runs provides.

A backend is a module (``numpy_ref``, ``numba_cpu``, ``cupy_cuda``) that
satisfies :class:`Backend` structurally. An update is two calls, so that an
optimizer prepares once per step and launches once per tensor (or arena buffer):

``prepare(rule, hyper, signature)``
    the step's scalars from the checked hyperparameters, computed once on the
    host, plus whatever the backend needs to launch that signature (compiled
    drivers, kernel keys); nothing is written.
``launch(rule, arrays, prepared)``
    one fused pass over ``arrays`` in place (checked, C-contiguous, one shape,
    the dtypes of ``signature``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from fusedopt.kernels.dtypes import Signature
from fusedopt.kernels.registry import Rule


@runtime_checkable
class Backend(Protocol):
    """What a backend module provides (see the module docstring)."""

    NAME: str

    def is_available(self) -> tuple[bool, str]:
        """Whether it can run here, and a sentence saying why (not)."""
        ...

    def prepare(self, rule: Rule, hyper: dict, signature: Signature) -> Any:
        """The step's scalars (and launch data) for ``signature``; writes nothing."""
        ...

    def launch(self, rule: Rule, arrays: tuple, prepared: Any) -> None:
        """One fused in-place pass of ``rule`` over ``arrays``."""
        ...

    def update(self, rule: Rule, arrays: tuple, hyper: dict, signature: Signature) -> None:
        """``launch(rule, arrays, prepare(rule, hyper, signature))``."""
        ...

    def sum_of_squares(self, array) -> Any:
        """``sum(x*x)`` in float64 (a float, or a 0-d device array on a GPU)."""
        ...


def overlap_error(fname: str, name_a: str, name_b: str) -> ValueError:
    """The error for two arguments that share memory."""
    return ValueError(f"{fname}: {name_a} and {name_b} share memory; each argument needs its "
                      "own array (the same array passed twice?)")
