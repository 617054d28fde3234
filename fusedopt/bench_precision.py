"""``fusedopt bench --precision``: a rule's precision recipes at one size, against two floors.

Each recipe stores the arrays of one call differently (see
:mod:`fusedopt.kernels.dtypes`); the update is the same rule, computed in
float32. In one run, per rule and recipe:

``fusedopt``    the library call (``fo.adam_(..., master=..., stochastic_rounding=...)``);
``bytes floor`` a Numba loop that reads every array once and writes the written ones
                once with integer math: the memory traffic alone;
``math floor``  a plain Numba loop written here by hand (not generated) doing the
                rule's math on the same storage: bit-cast loads, rounding stores,
                nothing else (no checks, no dispatch).

Ratios: ``x math floor`` (the library's overhead over the plainest loop that
does the same work) and ``x fp32`` (the recipe's time over float32 everything:
below 1 is faster). bfloat16 comes from ml_dtypes (an optional extra); without
it the bfloat16 recipes are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from fusedopt import functional
from fusedopt.backends.numba_lowp import (
    load_bf16,
    random16,
    store_bf16,
    store_bf16_bf,
    store_bf16_sr,
)
from fusedopt.kernels import RULES, dtypes
from fusedopt.kernels.rounding import slot_key

#: recipe -> (parameter, gradient, state, master copy, stochastic rounding)
RECIPES = {name: (param, param, state, master, stochastic)
           for name, (param, state, master, stochastic) in dtypes.RECIPES.items()
           if name in ("fp32", "bf16-params", "fp32-master", "bf16", "bf16-sr")}
RULE_NAMES = ("sgd", "momentum", "adam")


# ------------------------------------------------- storage-generic loads and stores (bf16)
def ld(a, at):  # pragma: no cover - replaced by the overload in compiled code
    raise NotImplementedError


def st(a, at, value, keys, slot):  # pragma: no cover
    raise NotImplementedError


@overload(ld, inline="always")
def _ld(a, at):
    if a.dtype == types.uint16:
        return lambda a, at: load_bf16(a[at])
    return lambda a, at: a[at]


@overload(st, inline="always")
def _st(a, at, value, keys, slot):
    if a.dtype != types.uint16:
        def plain(a, at, value, keys, slot):
            a[at] = value
        return plain
    if keys is None or isinstance(keys, types.NoneType):
        def nearest(a, at, value, keys, slot):
            a[at] = store_bf16(value)
        return nearest
    if isinstance(keys, types.Boolean):  # every array bfloat16: NaNs need no select
        def nearest_from_bf16(a, at, value, keys, slot):
            a[at] = store_bf16_bf(value)
        return nearest_from_bf16

    def stochastic(a, at, value, keys, slot):
        a[at] = store_bf16_sr(value, random16(at, keys[slot]))
    return stochastic


# -------------------------------------------------------------- the hand-written math loops
# The same math as the rules (fusedopt/kernels/rules), with the same host scalars, written out.
@njit(parallel=True, nogil=True, error_model="numpy")
def sgd_loop(param, grad, master, keys, s):
    grad_scale, lr = s[0], s[1]
    for i in prange(param.size):
        x = master[i] if master is not None else ld(param, i)
        g = ld(grad, i) * grad_scale  # HYPER: no weight decay, which the rules then skip
        x = x - lr * g
        if master is not None:
            master[i] = x
        st(param, i, x, keys, 0)


@njit(parallel=True, nogil=True, error_model="numpy")
def momentum_loop(param, grad, velocity, master, keys, s):
    grad_scale, lr, beta, one_minus_dampening, nesterov = s[0], s[1], s[2], s[3], s[5]
    for i in prange(param.size):
        x = master[i] if master is not None else ld(param, i)
        g = ld(grad, i) * grad_scale  # HYPER: no weight decay, which the rules then skip
        v = beta * ld(velocity, i) + one_minus_dampening * g
        update = g + beta * v if nesterov else v
        x = x - lr * update
        if master is not None:
            master[i] = x
        st(param, i, x, keys, 0)
        st(velocity, i, v, keys, 2)


@njit(parallel=True, nogil=True, error_model="numpy")
def adam_loop(param, grad, exp_avg, exp_avg_sq, master, keys, s):
    grad_scale, beta1, one_minus_beta1, beta2, one_minus_beta2 = s[0], s[1], s[2], s[3], s[4]
    step_size, inv_sqrt_bc2, eps, param_scale = s[5], s[6], s[7], s[9]
    for i in prange(param.size):
        x = (master[i] if master is not None else ld(param, i)) * param_scale
        g = ld(grad, i) * grad_scale  # HYPER: no weight decay, which the rules then skip
        m = beta1 * ld(exp_avg, i) + one_minus_beta1 * g
        v = beta2 * ld(exp_avg_sq, i) + one_minus_beta2 * g * g
        x = x - step_size * m / (np.sqrt(v) * inv_sqrt_bc2 + eps)
        if master is not None:
            master[i] = x
        st(param, i, x, keys, 0)
        st(exp_avg, i, m, keys, 2)
        st(exp_avg_sq, i, v, keys, 3)


# --------------------------------------------- the bytes floors (integer views of the arrays)
# ``keep`` is a zero the compiler cannot see: every array is read and written, its bits left
# as they were, so the calls timed after a floor start from the same values.
@njit(parallel=True, nogil=True)
def sgd_bytes(param, grad, master, keep):
    for i in prange(param.size):
        if master is not None:
            master[i] = master[i] ^ (grad[i] & keep)
            param[i] = master[i] >> 16  # written, never read: the master's bfloat16 bits
        else:
            param[i] = param[i] ^ (grad[i] & keep)


@njit(parallel=True, nogil=True)
def momentum_bytes(param, grad, velocity, master, keep):
    for i in prange(param.size):
        carry = grad[i] & keep
        velocity[i] = velocity[i] ^ carry
        if master is not None:
            master[i] = master[i] ^ carry
            param[i] = master[i] >> 16
        else:
            param[i] = param[i] ^ carry


@njit(parallel=True, nogil=True)
def adam_bytes(param, grad, exp_avg, exp_avg_sq, master, keep):
    for i in prange(param.size):
        carry = grad[i] & keep
        exp_avg[i] = exp_avg[i] ^ carry
        exp_avg_sq[i] = exp_avg_sq[i] ^ carry
        if master is not None:
            master[i] = master[i] ^ carry
            param[i] = master[i] >> 16
        else:
            param[i] = param[i] ^ carry


MATH_LOOPS = {"sgd": sgd_loop, "momentum": momentum_loop, "adam": adam_loop}
BYTES_LOOPS = {"sgd": sgd_bytes, "momentum": momentum_bytes, "adam": adam_bytes}


# ------------------------------------------------------------------------- measurement
@dataclass
class PrecisionResult:
    rule: str
    recipe: str
    n: int
    bytes_moved: int
    seconds: dict  # "fusedopt", "math floor", "bytes floor" -> median seconds


def _storage_arrays(rule_name: str, recipe: str, n: int, rng, memory: np.ndarray):
    """The call's arrays (16-bit as ml_dtypes bfloat16), the master copy, and kwargs, all
    laid out from the start of ``memory``, with their first values."""
    import ml_dtypes

    param_dtype, grad_dtype, state_dtype, master, stochastic = RECIPES[recipe]
    rule = RULES[rule_name]
    numpy_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
    arrays, offset = [], 0

    def carve(dtype):
        nonlocal offset
        size = n * np.dtype(dtype).itemsize
        view = memory[offset: offset + size].view(dtype)
        offset += size
        return view

    for k, name in enumerate(rule.arrays):
        values = rng.standard_normal(n).astype(np.float32)
        if name == "exp_avg_sq":
            values = np.abs(values) * np.float32(1e-3)
        dtype = param_dtype if k == 0 else (state_dtype if name in rule.writes else grad_dtype)
        arrays.append(carve(numpy_dtype[dtype]))
        arrays[-1][...] = values.astype(numpy_dtype[dtype])
    master_copy = None
    if master:
        master_copy = carve(np.float32)
        master_copy[...] = arrays[0].astype(np.float32)
    return arrays, master_copy, stochastic


def _memory_for(rule_name: str, recipes, n: int) -> np.ndarray:
    """One buffer that holds any of ``recipes``' arrays: every recipe of a rule is laid out
    over the same memory, so no recipe gains or loses by where its pages fell (on a
    virtual machine the same loop over two fresh allocations differed by up to 35%)."""
    rule = RULES[rule_name]
    widest = 0
    for recipe in recipes:
        param_dtype, grad_dtype, state_dtype, master, _ = RECIPES[recipe]
        sizes = [param_dtype, grad_dtype] + [state_dtype] * (len(rule.arrays) - 2)
        widest = max(widest, sum(2 if d == "bfloat16" else 4 for d in sizes) + 4 * master)
    return np.zeros(widest * n, dtype=np.uint8)


def _bytes(arrays, master, rule_name) -> int:
    rule = RULES[rule_name]
    total = sum(a.nbytes * (2 if name in rule.writes else 1)
                for a, name in zip(arrays, rule.arrays, strict=True))
    if master is not None:  # the master is read and written, the 16-bit parameter only written
        total += 2 * master.nbytes - arrays[0].nbytes
    return total


def _interleaved_medians(setups: dict, repeats: int) -> dict:
    """Median seconds of each call, timed in interleaved rounds (each recipe's calls once
    per round, its first values put back before them), so a machine whose speed drifts
    during the run slows them all alike: ``{(recipe, call name): seconds}``."""
    for restore, calls in setups.values():  # compile, warm the caches
        restore()
        for call in calls.values():
            call()
    times: dict = {(recipe, name): [] for recipe, (_, calls) in setups.items()
                   for name in calls}
    for _ in range(repeats):
        for recipe, (restore, calls) in setups.items():
            restore()  # the recipes share memory: each starts from its own values
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[recipe, name].append(time.perf_counter() - start)
    return {key: float(np.median(t)) for key, t in times.items()}


def _bits(a):
    """The array as unsigned integers of its own width (bf16 as its patterns)."""
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)


def _kernel_view(a):
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a


#: no weight decay: the rules then have no such term, and neither have the math floors
HYPER = {"sgd": {"lr": 1e-3}, "momentum": {"lr": 1e-3, "beta": 0.9},
         "adam": {"lr": 1e-3}}


def _calls(rule_name: str, recipe: str, n: int, memory: np.ndarray, seed: int = 0
           ) -> tuple[Callable[[], None], dict, int]:
    """``(restore, the three timed calls of one rule and recipe (the library, both
    floors), the bytes they move)``: the arrays lie from the start of ``memory``, and
    ``restore()`` puts their first values back."""
    rng = np.random.default_rng(seed)
    rule = RULES[rule_name]
    arrays, master, stochastic = _storage_arrays(rule_name, recipe, n, rng, memory)
    first = [a.copy() for a in arrays] + ([] if master is None else [master.copy()])
    hyper = dict(HYPER[rule_name])
    function = functional.FUNCTIONS[rule_name + "_"]
    step = [0]
    extra = {"master": master} if master is not None else {}
    if stochastic:
        extra.update(stochastic_rounding=True, seed=1)

    def restore():
        for a, values in zip(arrays + ([] if master is None else [master]), first,
                             strict=True):
            np.copyto(a, values)

    def library():
        step[0] += 1
        function(*arrays, step=step[0], **hyper, **extra)

    # keys: the stochastic stores' keys; False: nearest stores in a loop of bfloat16 arrays
    # only (the library's loops then skip the NaN select too: numba_codegen.bf16_only)
    keys = np.array([slot_key(1, 1, k) for k in range(len(rule.arrays))], np.uint32) \
        if stochastic else (False if master is None and all(a.itemsize == 2 for a in arrays)
                            else None)
    views = [_kernel_view(a) for a in arrays]
    scalars = rule.host_scalars(**{**rule.defaults, **hyper, **({"step": 3}
                                                                if rule.needs_step else {})})
    packed = np.array(scalars, np.float32)  # the rule's own host scalars, in order

    def math_floor():
        MATH_LOOPS[rule_name](*views, master, keys, packed)

    bits = [_bits(a) for a in arrays]
    master_bits = None if master is None else master.view(np.uint32)

    def bytes_floor():
        BYTES_LOOPS[rule_name](*bits, master_bits, 0)

    calls = {"fusedopt": library, "math floor": math_floor, "bytes floor": bytes_floor}
    return restore, calls, _bytes(arrays, master, rule_name)


def measure_rule(rule_name: str, recipes, n: int, repeats: int = 10) -> list[PrecisionResult]:
    """Every recipe of one rule over the same memory (:func:`_memory_for`), timed in the
    same interleaved rounds (each round runs every recipe's library call and floors once):
    the ratios between recipes hold even on a machine whose speed drifts during the
    run."""
    memory = _memory_for(rule_name, recipes, n)
    setups = {recipe: _calls(rule_name, recipe, n, memory) for recipe in recipes}
    medians = _interleaved_medians({recipe: setup[:2] for recipe, setup in setups.items()},
                                   repeats)
    return [PrecisionResult(rule_name, recipe, n, nbytes,
                            {name: medians[recipe, name] for name in calls})
            for recipe, (_, calls, nbytes) in setups.items()]


def measure(rule_name: str, recipe: str, n: int, repeats: int = 10) -> PrecisionResult:
    """One rule and recipe: the library call and both floors, median of ``repeats``."""
    return measure_rule(rule_name, [recipe], n, repeats)[0]


def run(rules=RULE_NAMES, recipes=tuple(RECIPES), n: int = 2**24, repeats: int = 10,
        progress=None) -> list[PrecisionResult]:
    """:func:`measure_rule` for every rule (bfloat16 recipes need ml_dtypes)."""
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        recipes = [r for r in recipes if r == "fp32"]
        if progress:
            progress("ml_dtypes is not installed: only fp32 is measured "
                     "(pip install 'fusedopt[bf16]')")
    recipes = ["fp32", *(r for r in recipes if r != "fp32")]  # the baseline of the speedups
    out = []
    for rule_name in rules:
        if progress:
            progress(f"{rule_name}: {', '.join(recipes)} at n={n}, interleaved")
        out.extend(measure_rule(rule_name, recipes, n, repeats))
    return out


def rows(results: list[PrecisionResult]) -> list[dict]:
    """One row per rule and recipe, with its ratios."""
    fp32 = {r.rule: r.seconds["fusedopt"] for r in results if r.recipe == "fp32"}
    out = []
    for r in results:
        t = r.seconds["fusedopt"]
        out.append({"rule": r.rule, "recipe": r.recipe, "n": r.n, "ms": t * 1e3,
                    "bytes_per_element": r.bytes_moved / r.n,
                    "GB/s": r.bytes_moved / t / 1e9,
                    "x math floor": t / r.seconds["math floor"],
                    "x bytes floor": t / r.seconds["bytes floor"],
                    "speedup vs fp32": fp32[r.rule] / t if r.rule in fp32 else None})
    return out


def format_table(table: list[dict]) -> str:
    header = (f"{'rule':<9} {'recipe':<12} {'B/elem':>6} {'ms':>8} {'GB/s':>6} "
              f"{'x math floor':>12} {'x bytes floor':>13} {'speedup vs fp32':>15}")
    lines = [header, "-" * len(header)]
    for row in table:
        speedup = "" if row["speedup vs fp32"] is None else f"{row['speedup vs fp32']:.2f}x"
        lines.append(f"{row['rule']:<9} {row['recipe']:<12} {row['bytes_per_element']:>6.0f} "
                     f"{row['ms']:>8.2f} {row['GB/s']:>6.1f} {row['x math floor']:>12.2f} "
                     f"{row['x bytes floor']:>13.2f} {speedup:>15}")
    return "\n".join(lines)
