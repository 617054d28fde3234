"""The Numba loops are vectorised: packed (not scalar) instructions in their machine code.

A loop LLVM could not vectorise runs about 5x slower (ANCHORS.md: a serial loop
with scalar vsqrtss ran at 6 GB/s instead of 44). The usual culprit is Numba's
default ``error_model="python"``, whose zero-division check blocks the vectoriser.
Every registered rule is checked, for both drivers and both dtypes.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from fusedopt.backends import numba_codegen, numba_cpu
from fusedopt.kernels import RULES
from fusedopt.kernels.dtypes import homogeneous

PACKED = re.compile(r"\b(v?(?:mul|add|sub|fmadd\w*|sqrt|div|max|min|blendv|and|cmp\w*)p[sd])\s")


@pytest.fixture(scope="module")
def uncached():
    # Numba cannot show the assembly of code loaded from its on-disk cache.
    return numba_cpu.in_memory_module("fusedopt_numba_drivers_asm_test")


@pytest.mark.parametrize("kind", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule_name", list(RULES))
def test_loop_is_vectorised(uncached, rule_name, dtype, kind):
    rule = RULES[rule_name]
    signature = homogeneous(rule.arrays, dtype)
    driver = getattr(uncached, numba_codegen.driver_name(rule, signature, kind))
    arrays = [np.ones(64, dtype) for _ in rule.arrays]
    assert driver(*arrays, np.full(len(rule.scalars), 0.5, dtype)) == 0
    asm = "\n".join(driver.inspect_asm(sig) for sig in driver.signatures)
    packed = set(PACKED.findall(asm))
    assert any(re.match(r"v?(mul|add|sub|fmadd)", op) for op in packed), \
        f"{rule_name}_{kind}: no packed arithmetic in the loop ({sorted(packed)})"
    names = rule.element.__code__.co_names
    if "sqrt" in names:
        assert any("sqrtp" in op for op in packed), f"{rule_name}_{kind}: sqrt not vectorised"
        assert any("divp" in op for op in packed), f"{rule_name}_{kind}: division not vectorised"
    if "max" in names:
        assert any(re.match(r"v?(max|blendv|cmp)", op) for op in packed), \
            f"{rule_name}_{kind}: max not vectorised ({sorted(packed)})"
    if "sign" in names:
        assert any(re.match(r"v?(blendv|cmp|and)", op) for op in packed), \
            f"{rule_name}_{kind}: sign not vectorised ({sorted(packed)})"
