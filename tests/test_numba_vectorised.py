"""The Numba loops are vectorised: packed (not scalar) instructions in their machine code.

A loop LLVM could not vectorise runs about 5x slower (ANCHORS.md: a serial loop
with scalar vsqrtss ran at 6 GB/s instead of 44). The usual culprit is Numba's
default ``error_model="python"``, whose zero-division check blocks the vectoriser.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from fusedopt.backends import numba_cpu
from fusedopt.kernels.rules import RULES

PACKED = re.compile(r"\b(v?(?:mul|add|sub|fmadd\w*|sqrt|div)p[sd])\s")


@pytest.fixture(scope="module")
def uncached():
    # Numba cannot show the assembly of code loaded from its on-disk cache.
    return numba_cpu.in_memory_module("fusedopt_numba_drivers_asm_test")


@pytest.mark.parametrize("kind", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule_name", list(RULES))
def test_loop_is_vectorised(uncached, rule_name, dtype, kind):
    rule = RULES[rule_name]
    driver = getattr(uncached, f"{rule_name}_{kind}")
    arrays = [np.ones(64, dtype) for _ in rule.arrays]
    assert driver(*arrays, np.full(len(rule.scalars), 0.5, dtype)) == 0
    asm = "\n".join(driver.inspect_asm(sig) for sig in driver.signatures)
    packed = set(PACKED.findall(asm))
    assert packed, f"{rule_name}_{kind}: no packed arithmetic in the loop"
    if "sqrt" in rule.element.__code__.co_names:
        assert any("sqrtp" in op for op in packed), f"{rule_name}_{kind}: sqrt not vectorised"
        assert any("divp" in op for op in packed), f"{rule_name}_{kind}: division not vectorised"
