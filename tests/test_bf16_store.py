"""The bfloat16 store without a NaN select (``numba_lowp.store_bf16_bf``), used by host
loops whose arrays are all bfloat16 (``numba_codegen.bf16_only``), and the threaded loop
of those that takes two elements a 32-bit word (``numba_codegen.pairs_loop``).

Oracles: the full store (``store_bf16``) and the NumPy rounding of
:mod:`fusedopt.kernels.rounding`. The claim under test: for every value that is not a
NaN the two stores agree bit for bit, and a NaN whose low 16 bits are zero (every NaN
such a loop can make) stays a NaN; so a whole all-bfloat16 call, fed signalling and
quiet NaN of every sign and payload, stores what the float32 loop over the same values
stores, rounded to nearest, NaN where it has NaN.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit
from rule_table import RULE_INFO

from fusedopt import functional
from fusedopt.backends import numba_cpu
from fusedopt.backends.numba_codegen import bf16_only, driver_source
from fusedopt.backends.numba_lowp import store_bf16, store_bf16_bf
from fusedopt.backends.numba_pairs import PAIRS_CHUNK
from fusedopt.kernels import RULES, rounding
from fusedopt.kernels.dtypes import signature


@njit
def _both(values):
    full = np.empty(values.size, np.uint16)
    lean = np.empty(values.size, np.uint16)
    for i in range(values.size):
        full[i] = store_bf16(values[i])
        lean[i] = store_bf16_bf(values[i])
    return full, lean


def _edges() -> np.ndarray:
    """Every upper half (every bfloat16: the exponents, the overflow threshold, infinities,
    NaN) with the lower halves that decide a rounding: 0, just below, at and above the tie,
    all ones."""
    high = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    lows = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)
    return (high[:, None] | lows[None, :]).ravel()


def test_every_value_that_is_not_nan_is_stored_as_the_full_store_stores_it():
    bits = np.concatenate([_edges(), np.random.default_rng(0).integers(
        0, 1 << 32, 1 << 20, dtype=np.uint32, endpoint=False)])
    values = bits.view(np.float32)
    finite_or_inf = ~np.isnan(values)
    full, lean = _both(values[finite_or_inf])
    assert np.array_equal(lean, full)
    assert np.array_equal(full, rounding.nearest(values[finite_or_inf], "bfloat16"))


def test_a_nan_with_zero_low_bits_stays_the_same_nan():
    bits = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    values = bits.view(np.float32)
    nan = np.isnan(values)  # 2 x 127 patterns, quiet and signalling, both signs
    assert nan.sum() == 254
    _, lean = _both(values[nan])
    assert np.array_equal(lean, (bits[nan] >> np.uint32(16)).astype(np.uint16))


def test_only_all_bfloat16_nearest_loops_without_a_master_copy_drop_the_select():
    rule = RULES["momentum"]
    every = signature(rule.arrays, ["bfloat16"] * 3, writes=rule.writes)
    assert bf16_only(every)
    assert "_store_bf16_bf(" in driver_source(rule, every)
    assert "_store_bf16_bf(" not in driver_source(rule, every, capturable=True)
    for other in (signature(rule.arrays, ["bfloat16", "bfloat16", "float32"], writes=rule.writes),
                  signature(rule.arrays, ["bfloat16"] * 3, writes=rule.writes,
                            stochastic=True),
                  signature(rule.arrays, ["bfloat16"] * 3, writes=rule.writes, master=True),
                  signature(rule.arrays, ["float16"] * 3, writes=rule.writes)):
        assert not bf16_only(other)
        assert "_store_bf16_bf(" not in driver_source(rule, other)


NAN_PATTERNS = np.array([0x7FC0, 0xFFC0, 0x7F81, 0xFF81, 0x7FFF, 0xFFFF, 0x7FA5, 0x7F80,
                         0xFF80], np.uint16)  # quiet, signalling, all ones, payloads, +-inf


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("n", [67, 3 << 16])  # one serial loop; the threaded loop too
def test_an_all_bfloat16_call_fed_every_kind_of_nan_stores_the_float32_loops_rounding(
        name, n):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays come from ml_dtypes")
    rule = RULES[name]
    rng = np.random.default_rng(3)
    patterns = []
    for array in rule.arrays:
        values = rng.standard_normal(n).astype(np.float32)
        if array in rule.nonnegative:
            values = np.abs(values)
        bits = values.astype(ml_dtypes.bfloat16).view(np.uint16)
        spots = rng.choice(n, size=4 * NAN_PATTERNS.size, replace=False)
        bits[spots] = np.tile(NAN_PATTERNS, 4)
        patterns.append(bits)
    hyper = dict(RULE_INFO[name].sample_hyper)
    if rule.needs_step:
        hyper.setdefault("step", 3)
    update = functional.FUNCTIONS[name + "_"]
    low = [p.copy().view(ml_dtypes.bfloat16) for p in patterns]
    wide = [(p.astype(np.uint32) << np.uint32(16)).view(np.float32) for p in patterns]
    with np.errstate(all="ignore"):
        update(*low, **hyper)
        update(*wide, **hyper)
    for array, stored, exact in zip(rule.arrays, low, wide, strict=True):
        got, want = stored.view(np.uint16), rounding.nearest(exact, "bfloat16")
        nan = np.isnan(exact)
        assert np.array_equal(np.isnan(stored.astype(np.float32)), nan), array
        assert np.array_equal(got[~nan], want[~nan]), array


def _patterns(rule, n, rng):
    arrays = []
    for array in rule.arrays:
        values = rng.standard_normal(n).astype(np.float32)
        if array in rule.nonnegative:
            values = np.abs(values)
        bits = (values.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
        spots = rng.choice(n, size=min(n, NAN_PATTERNS.size), replace=False)
        bits[spots] = NAN_PATTERNS[:spots.size]
        arrays.append(bits)
    return arrays


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("n, first", [(3 * PAIRS_CHUNK * 2 + 5, 0),  # odd, a part chunk
                                      (PAIRS_CHUNK * 2 + 8, 1),  # not on a word boundary
                                      (2 * PAIRS_CHUNK + 2, 0)])  # two elements past a chunk
def test_the_threaded_loop_over_word_pairs_stores_the_one_element_loops_bits(name, n, first):
    """The threaded all-bfloat16 loop takes two elements a word where every array starts
    on a 32-bit boundary, and one at a time for the rest; the serial loop takes one at a
    time always: both must store the same bits, NaN in the same places."""
    rule = RULES[name]
    sig = signature(rule.arrays, ["bfloat16"] * len(rule.arrays), writes=rule.writes)
    assert "_store_bf16_pair(" in driver_source(rule, sig)
    rng = np.random.default_rng(n + first)
    buffers = _patterns(rule, n + first, rng)
    paired = [b[first:] for b in buffers]
    single = [p.copy() for p in paired]
    hyper = {**rule.defaults, **RULE_INFO[name].sample_hyper}
    if rule.needs_step:
        hyper.setdefault("step", 3)
    scalars, serial, parallel, *_ = numba_cpu.prepare(rule, hyper, sig)
    with np.errstate(all="ignore"):
        assert numba_cpu.call(parallel, *paired, scalars, parallel=True) == 0
        assert serial(*single, scalars) == 0
    for array, a, b in zip(rule.arrays, paired, single, strict=True):
        wide_a = (a.astype(np.uint32) << np.uint32(16)).view(np.float32)
        wide_b = (b.astype(np.uint32) << np.uint32(16)).view(np.float32)
        nan = np.isnan(wide_b)
        assert np.array_equal(np.isnan(wide_a), nan), array
        assert np.array_equal(a[~nan], b[~nan]), array


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "lion"])
def test_the_threaded_multi_tensor_loop_over_word_pairs_stores_the_one_element_bits(name):
    """A list of all-bfloat16 tensors in one threaded call: each chunk takes two elements
    a word where it starts on a 32-bit boundary in every array (odd sizes put later
    chunks and tensors off it; a tensor sliced from element 1 starts off it), the rest one
    at a time. The oracle: each tensor through the serial one-element loop."""
    from fusedopt import config

    rule = RULES[name]
    sig = signature(rule.arrays, ["bfloat16"] * len(rule.arrays), writes=rule.writes)
    rng = np.random.default_rng(5)
    sizes = [config.NUMBA_PARALLEL_MIN_SIZE + 3, 7, 2 * PAIRS_CHUNK, 1, 4097]
    tensors = []
    for k, n in enumerate(sizes):
        first = k % 2  # every other tensor starts off a word boundary
        tensors.append([b[first:] for b in _patterns(rule, n + first, rng)])
    copies = [[a.copy() for a in t] for t in tensors]
    hyper = {**rule.defaults, **RULE_INFO[name].sample_hyper}
    if rule.needs_step:
        hyper.setdefault("step", 3)
    prepared = numba_cpu.prepare(rule, hyper, sig)
    scalars, serial = prepared[0], prepared[1]
    with np.errstate(all="ignore"):
        numba_cpu.launch_many(rule, [tuple(t) for t in tensors], prepared)
        for t in copies:
            assert serial(*t, scalars) == 0
    for ours, theirs in zip(tensors, copies, strict=True):
        for array, a, b in zip(rule.arrays, ours, theirs, strict=True):
            nan = np.isnan((b.astype(np.uint32) << np.uint32(16)).view(np.float32))
            assert np.array_equal(np.isnan((a.astype(np.uint32) << np.uint32(16))
                                           .view(np.float32)), nan), array
            assert np.array_equal(a[~nan], b[~nan]), array
