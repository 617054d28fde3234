"""A list of tensors in one compiled call (the multi-tensor Numba drivers).

The oracle is the one-tensor driver, itself checked against the float64 reference
(``test_rules_vs_reference.py``): every tensor of a list must come out bit for bit
as if it had been updated alone, whatever its size, alignment or place in the list.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from rule_table import RULE_INFO, sample_arrays

import fusedopt as fo
from fusedopt.backends import multi_tensor, numba_cpu
from fusedopt.kernels import RULES
from fusedopt.kernels.dtypes import homogeneous, signature


def tensors(rule, sizes, dtype, seed=0, misalign=False):
    """One tuple of arrays per size; with ``misalign``, each a view at an odd element offset
    into a larger buffer (so no tensor starts on a vector boundary)."""
    out = []
    for k, n in enumerate(sizes):
        arrays = sample_arrays(rule.name, (n,), seed=seed + k, scale=0.5)
        row = []
        for name in rule.arrays:
            if misalign:
                buffer = np.empty(n + 3, dtype)
                view = buffer[1 + k % 2: 1 + k % 2 + n]
                view[...] = arrays[name]
                row.append(view)
            else:
                row.append(arrays[name].astype(dtype))
        out.append(tuple(row))
    return out


def kwargs_of(rule) -> dict:
    kwargs = dict(RULE_INFO[rule.name].sample_hyper)
    if rule.needs_step:
        kwargs.setdefault("step", 3)
    return kwargs


def one_by_one(rule, rows, **extra) -> None:
    """The oracle: each tensor alone, through the one-tensor driver."""
    function = fo.functional.FUNCTIONS[rule.name + "_"]
    for row in rows:
        function(*row, **kwargs_of(rule), backend="numba", **extra)


def all_at_once(rule, rows, sig=None, rounding=None, offsets=None) -> None:
    sig = sig or homogeneous(rule.arrays, rows[0][0].dtype)
    hyper = {**rule.defaults, **kwargs_of(rule)}
    numba_cpu.launch_many(rule, rows, numba_cpu.prepare(rule, hyper, sig, rounding), offsets)


def copies(rows):
    return [tuple(a.copy() for a in row) for row in rows]


SIZES = [0, 1, 7, 31, 33, 1000, (1 << 16) + 5, 3, 0, 2 * (1 << 16)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule_name", list(RULES))
def test_a_list_in_one_call_equals_each_tensor_alone(rule_name, dtype):
    """Empty, odd-sized and chunk-crossing tensors, every one misaligned."""
    rule = RULES[rule_name]
    rows = tensors(rule, SIZES, dtype, misalign=True)
    want = copies(rows)
    one_by_one(rule, want)
    all_at_once(rule, rows)
    for k, (got, expected) in enumerate(zip(rows, want, strict=True)):
        for name, g, e in zip(rule.arrays, got, expected, strict=True):
            assert np.array_equal(g, e, equal_nan=True), (rule_name, k, name)


def test_over_a_thousand_tensors_in_one_call():
    rule = RULES["adam"]
    sizes = [int(n) for n in np.random.default_rng(1).integers(0, 300, 1500)]
    rows = tensors(rule, sizes, np.float32)
    want = copies(rows)
    one_by_one(rule, want)
    all_at_once(rule, rows)
    assert all(np.array_equal(g, e) for r, w in zip(rows, want, strict=True)
               for g, e in zip(r, w, strict=True))


@pytest.mark.parametrize("storage, master, stochastic", [
    ("bfloat16", False, False), ("bfloat16", False, True), ("float16", True, False),
    ("bfloat16", True, True)])
def test_16_bit_lists_round_each_tensor_as_alone(storage, master, stochastic):
    """Stochastic rounding numbers elements across the model: tensor k's bits are those of
    its own call at ``rounding_offset`` = its first element's index in the list."""
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")
    dtype = np.dtype(ml_dtypes.bfloat16) if storage == "bfloat16" else np.dtype(np.float16)
    rule = RULES["adam"]
    sizes = [5, 0, 1 << 16, 77]
    rows = tensors(rule, sizes, np.float32)
    rows = [tuple(a.astype(dtype) for a in row) for row in rows]
    masters = [row[0].astype(np.float32) for row in rows] if master else None
    want, want_masters = copies(rows), [m.copy() for m in masters] if master else None
    offsets = list(np.cumsum([0, *sizes[:-1]]))
    function = fo.functional.FUNCTIONS["adam_"]
    for k, row in enumerate(want):
        function(*row, **kwargs_of(rule), master=want_masters[k] if master else None,
                 stochastic_rounding=stochastic, seed=7, rounding_offset=int(offsets[k]),
                 backend="numba")
    sig = signature(rule.arrays, [storage] * 4, writes=rule.writes, master=master,
                    stochastic=stochastic)
    views = [tuple(a.view(np.uint16) for a in row) + ((masters[k],) if master else ())
             for k, row in enumerate(rows)]
    all_at_once(rule, views, sig, (7, 3) if stochastic else None, offsets)
    for k in range(len(sizes)):
        for g, e in zip(rows[k], want[k], strict=True):
            assert np.array_equal(g.view(np.uint16), e.view(np.uint16)), k
        if master:
            assert np.array_equal(masters[k], want_masters[k])


def test_shared_memory_is_refused_before_any_write():
    rule = RULES["adam"]
    rows = tensors(rule, [10, 20, 30], np.float32)
    buffer = np.zeros(40, np.float32)
    rows[1] = (buffer[:20], rows[1][1], rows[1][2], buffer[10:30])  # param meets exp_avg_sq
    before = copies(rows)
    with pytest.raises(ValueError, match="tensor 1's param and tensor 1's exp_avg_sq share"):
        all_at_once(rule, rows)
    assert all(np.array_equal(g, e) for r, w in zip(rows, before, strict=True)
               for g, e in zip(r, w, strict=True))
    rows = tensors(rule, [10, 20], np.float32)
    grad_on_state = (rows[0][0].copy(), rows[0][2], rows[0][2].copy(), rows[0][3].copy())
    rows.append(grad_on_state)  # tensor 2 reads its gradient from tensor 0's exp_avg
    before = copies(rows)
    with pytest.raises(ValueError, match="tensor 2's grad and tensor 0's exp_avg share"):
        all_at_once(rule, rows)
    assert all(np.array_equal(g, e) for r, w in zip(rows, before, strict=True)
               for g, e in zip(r, w, strict=True))


def test_gradients_may_share_memory_they_are_only_read():
    rule = RULES["sgd"]
    grad = np.full(8, 0.5, np.float32)
    rows = [(np.ones(8, np.float32), grad), (np.zeros(8, np.float32), grad)]
    all_at_once(rule, rows)
    lr = RULE_INFO["sgd"].sample_hyper["lr"]
    wd = RULE_INFO["sgd"].sample_hyper["weight_decay"]
    np.testing.assert_allclose(rows[0][0], 1 - lr * (0.5 + wd), rtol=1e-6)
    np.testing.assert_allclose(rows[1][0], -lr * 0.5, rtol=1e-6)


def test_the_table_is_built_once_per_set_of_addresses():
    multi_tensor.clear()
    rule = RULES["sgd"]
    rows = tensors(rule, [4, 5], np.float32)
    all_at_once(rule, rows)
    all_at_once(rule, rows)
    assert len(multi_tensor._tables) == 1
    all_at_once(rule, rows[::-1])
    assert len(multi_tensor._tables) == 2


@pytest.mark.parametrize("rule_name", ["adam", "momentum"])
def test_the_multi_tensor_loop_is_vectorised(rule_name):
    """Views made from table addresses must not stop LLVM's vectoriser (it checks the
    pointers for overlap at run time and takes the packed loop)."""
    from fusedopt.backends import numba_codegen

    rule = RULES[rule_name]
    sig = homogeneous(rule.arrays, np.float32)
    module = numba_cpu.in_memory_module(
        f"fusedopt_multi_asm_{rule_name}",
        numba_codegen.HEADER + numba_codegen.element_source(rule)
        + numba_codegen.driver_source(rule, sig))
    driver = getattr(module, numba_codegen.driver_name(rule, sig, "multi_serial"))
    rows = tensors(rule, [64, 3], np.float32)
    hyper = {**rule.defaults, **kwargs_of(rule)}
    scalars = numba_cpu.prepare(rule, hyper, sig)[0]
    names, written, sizes = multi_tensor.columns(rule, sig)
    table, chunks, _ = multi_tensor.tables("t", names, written, rows, [0, 0], sizes)
    assert driver(table, chunks, scalars) == 0
    asm = "\n".join(driver.inspect_asm(s) for s in driver.signatures)
    assert re.search(r"\bv(mul|add|sub|fmadd\w*)ps\s", asm), "no packed arithmetic"
