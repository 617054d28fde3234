"""The ``"numpy"`` backend: the unfused reference, written back in place.

Every output is computed before the first write, so an error leaves the arrays
as they were. Works on CuPy arrays too (NumPy ufuncs dispatch to CuPy).
"""

from __future__ import annotations

import numpy as np

from fusedopt.kernels.reference import REFERENCE
from fusedopt.kernels.rules import Rule

NAME = "numpy"


def is_available() -> tuple[bool, str]:
    """Always available: NumPy is a requirement."""
    return True, "the unfused NumPy reference (always available)"


def prepare(rule: Rule, hyper: dict, dtype) -> dict:
    """The reference takes the public hyperparameters as they are."""
    return hyper


def launch(rule: Rule, arrays: tuple, hyper: dict) -> None:
    """Run ``rule`` over ``arrays`` in place with the reference implementation."""
    new_values = REFERENCE[rule.name](*arrays, **hyper)
    by_name = dict(zip(rule.arrays, arrays, strict=True))
    for name, value in zip(rule.writes, new_values, strict=True):
        by_name[name][...] = value


def update(rule: Rule, arrays: tuple, hyper: dict) -> None:
    """Run ``rule`` over ``arrays`` in place with the reference implementation."""
    launch(rule, arrays, hyper)


def sum_of_squares(array) -> float:
    """``sum(x*x)`` in float64."""
    x = array.astype(np.float64)
    return float(np.sum(x * x))
