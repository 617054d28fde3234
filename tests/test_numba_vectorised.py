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

from fusedopt.backends import numba_codegen, numba_cpu, numba_pairs
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


LOW_PRECISION_SIGNATURES = {  # (parameter and gradient, state, master, stochastic)
    "bf16": ("bfloat16", "bfloat16", False, False),
    "bf16-sr": ("bfloat16", "bfloat16", False, True),
    "fp16-master": ("float16", "float32", True, False),
}


@pytest.mark.parametrize("recipe", list(LOW_PRECISION_SIGNATURES))
@pytest.mark.parametrize("rule_name", list(RULES))
def test_16_bit_loops_are_vectorised_in_32_bit_lanes(rule_name, recipe):
    """The 16-bit conversions are integer bit manipulation: written in Python, Numba would
    widen them to 64-bit lanes (vpmovzxdq, vpsrlq), halving the vector width; the LLVM
    intrinsics keep them in packed 32-bit lanes next to packed float math."""
    from fusedopt.kernels.dtypes import signature

    rule = RULES[rule_name]
    param, state, master, stochastic = LOW_PRECISION_SIGNATURES[recipe]
    storage = [param if name not in rule.writes or k == 0 else state
               for k, name in enumerate(rule.arrays)]
    sig = signature(rule.arrays, storage, writes=rule.writes, master=master,
                    stochastic=stochastic)
    module = numba_cpu.in_memory_module(
        f"fusedopt_lowp_asm_{rule_name}_{recipe.replace('-', '_')}",
        numba_codegen.HEADER + numba_codegen.element_source(rule)
        + numba_codegen.driver_source(rule, sig))
    driver = getattr(module, numba_codegen.driver_name(rule, sig, "serial"))
    arrays = [np.zeros(64, np.uint16 if s in ("bfloat16", "float16") else np.float32)
              for s in storage] + ([np.zeros(64, np.float32)] if master else [])
    extra = [np.zeros(len(rule.arrays) + 1, np.int64)] if sig.stochastic else []
    assert driver(*arrays, np.full(len(rule.scalars), 0.5, np.float32), *extra) == 0
    asm = "\n".join(driver.inspect_asm(s) for s in driver.signatures)
    packed = set(PACKED.findall(asm))
    assert any(re.match(r"v?(mul|add|sub|fmadd)", op) for op in packed), sorted(packed)
    assert "vpmovzxwd" in asm or "vpunpcklwd" in asm, "16-bit loads are not widened in vectors"
    assert "vpmovzxdq" not in asm and "vpsrlq" not in asm, "the bit manipulation went 64-bit"
    if sig.stochastic:
        assert "vpmulld" in asm, "the hash's multiplies are not vectorised"


@pytest.mark.parametrize("rule_name", ["sgd", "momentum", "adam"])
def test_the_threaded_bfloat16_loop_over_word_pairs_is_vectorised(rule_name):
    """The all-bfloat16 threaded driver reads two elements a 32-bit word
    (``numba_codegen.pairs_loop``): its loops, both the word loop and the one-element
    loop after it, must run packed float math in 32-bit lanes."""
    from fusedopt.kernels.dtypes import signature

    rule = RULES[rule_name]
    sig = signature(rule.arrays, ["bfloat16"] * len(rule.arrays), writes=rule.writes)
    module = numba_cpu.in_memory_module(
        f"fusedopt_pairs_asm_{rule_name}",
        numba_codegen.HEADER + numba_codegen.element_source(rule)
        + numba_codegen.driver_source(rule, sig))
    driver = getattr(module, numba_codegen.driver_name(rule, sig, "parallel"))
    arrays = [np.zeros(4 * numba_pairs.PAIRS_CHUNK + 1, np.uint16) for _ in rule.arrays]
    assert driver(*arrays, np.full(len(rule.scalars), 0.5, np.float32)) == 0
    asm = "\n".join(driver.inspect_asm(s) for s in driver.signatures)
    word_loop = [line for line in asm.splitlines() if "ymm" in line]
    assert any(re.search(r"vmulps\s.*ymm", line) for line in word_loop), "no packed math"
    assert any(re.search(r"vpslld\s+\$16, .*ymm", line) for line in word_loop)
    assert any(re.search(r"vpand\s.*ymm", line) for line in word_loop)
    assert "vpmovzxdq" not in asm and "vpsrlq" not in asm, "the bit manipulation went 64-bit"
