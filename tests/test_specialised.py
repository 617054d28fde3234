"""Loops with a rule's neutral scalars written in (``Rule.specialised``): a ``grad_scale`` or
``param_scale`` of 1, no dampening, a flag off. The oracle is the general loop of the same
rule, which reads every scalar: with the same inputs (NaN, infinities, signed zeros and
subnormals among them) both must store the same bits, because writing a scalar's own value
into the code changes nothing but what LLVM can drop (a multiplication by 1, the unused
side of a flag's branch). NaN are NaN in both; their sign bit, which IEEE leaves to the
order of operations, may differ."""

from __future__ import annotations

import numpy as np
import pytest
from rule_table import RULE_INFO

from fusedopt.backends import numba_cpu
from fusedopt.backends.numba_codegen import constants_of, driver_name
from fusedopt.kernels import RULES
from fusedopt.kernels.dtypes import homogeneous, signature

SPECIALISED = [name for name, rule in RULES.items() if rule.specialised]
N = 67  # odd: the vectorised body and its remainder both run


def inputs(rule, dtype, seed=0):
    rng = np.random.default_rng(seed)
    arrays = []
    for name in rule.arrays:
        a = rng.standard_normal(N).astype(dtype)
        if name in rule.nonnegative:
            a = np.abs(a)
        arrays.append(a)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-40], dtype=dtype)
    for k, a in enumerate(arrays):  # each special value in a different array at each place
        a[5 + k: 5 + k + specials.size] = specials
    return arrays


def scalars_with(rule, values: dict, dtype) -> np.ndarray:
    hyper = {**rule.defaults, **RULE_INFO[rule.name].sample_hyper}
    if rule.needs_step:
        hyper.setdefault("step", 3)
    scalars = np.array(rule.host_scalars(**hyper), dtype=dtype)
    for name, value in values.items():
        scalars[rule.scalars.index(name)] = value
    return scalars


def cases():
    for name in SPECIALISED:
        rule = RULES[name]
        yield name, dict.fromkeys(rule.specialised, 1.0)
        yield name, {s: float(k % 2) for k, s in enumerate(rule.specialised)}


@pytest.mark.parametrize("name, values", list(cases()),
                         ids=[f"{n}-{'-'.join(f'{k}{v:g}' for k, v in v.items())}"
                              for n, v in cases()])
def test_a_loop_with_its_neutral_scalars_written_in_stores_the_same_bits(name, values):
    rule = RULES[name]
    sig = homogeneous(rule.arrays, "float32")
    scalars = scalars_with(rule, values, np.float32)
    constants = constants_of(rule, scalars)
    assert {rule.scalars[k] for k, _ in constants} == set(values)
    general = inputs(rule, np.float32)
    written = [a.copy() for a in general]
    with np.errstate(all="ignore"):
        assert numba_cpu._drivers_for(rule, sig)[0](*general, scalars) == 0
        special, _ = numba_cpu._drivers_for(rule, sig, "", constants)
        assert driver_name(rule, sig, "serial", constants) == special.__name__
        assert special(*written, scalars) == 0
    for a, b in zip(general, written, strict=True):
        assert_same_bits(a, b)


def assert_same_bits(a, b):
    nan = np.isnan(a)
    assert np.array_equal(nan, np.isnan(b))
    assert np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))


def test_bfloat16_storage_takes_the_written_in_loop_too():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays come from ml_dtypes")
    rule = RULES["momentum"]
    sig = signature(rule.arrays, ["bfloat16"] * 3, writes=rule.writes)
    scalars = scalars_with(rule, {"grad_scale": 1.0, "one_minus_dampening": 1.0,
                                  "nesterov": 0.0}, np.float32)
    constants = constants_of(rule, scalars)
    arrays = [a.astype(ml_dtypes.bfloat16).view(np.uint16) for a in inputs(rule, np.float32)]
    written = [a.copy() for a in arrays]
    with np.errstate(all="ignore"):
        assert numba_cpu._drivers_for(rule, sig)[0](*arrays, scalars) == 0
        assert numba_cpu._drivers_for(rule, sig, "", constants)[0](*written, scalars) == 0
    for a, b in zip(arrays, written, strict=True):  # as float32 (bfloat16's upper half)
        assert_same_bits((a.astype(np.uint32) << 16).view(np.float32),
                         (b.astype(np.uint32) << 16).view(np.float32))


def test_a_16_bit_call_with_default_hyperparameters_runs_the_written_in_loop():
    """SGD's defaults (grad_scale 1, no weight decay) over bfloat16 pick the threaded loop
    with both written in; small calls keep the general serial loop (no second compile for
    them); a GradScaler's 1/scale with a weight decay picks the general loops, and so does
    float32 storage, which is bound by memory, not arithmetic."""
    rule = RULES["sgd"]
    low = signature(rule.arrays, ["bfloat16"] * 2, writes=rule.writes)
    hyper = {**rule.defaults, "lr": 1e-3}
    _, serial, parallel, *_ = numba_cpu.prepare(rule, hyper, low)
    written = ((0, 1.0), (rule.scalars.index("weight_decay"), 0.0))
    assert parallel.__name__ == driver_name(rule, low, "parallel", written)
    assert serial.__name__ == driver_name(rule, low, "serial")
    prepared = numba_cpu.prepare(rule, dict(hyper, grad_scale=2.0**-16), low)
    assert prepared[2].__name__ == driver_name(rule, low, "parallel", written[1:])
    prepared = numba_cpu.prepare(rule, dict(hyper, grad_scale=2.0**-16, weight_decay=0.01),
                                 low)
    assert prepared[2].__name__ == driver_name(rule, low, "parallel")
    f32 = homogeneous(rule.arrays, "float32")
    assert numba_cpu.prepare(rule, hyper, f32)[2].__name__ == driver_name(rule, f32,
                                                                          "parallel")


def test_a_value_other_than_0_or_1_is_read_not_written_in():
    rule = RULES["momentum"]
    scalars = scalars_with(rule, {"grad_scale": 0.5, "one_minus_dampening": 0.9,
                                  "nesterov": 1.0, "weight_decay": 0.01}, np.float64)
    assert constants_of(rule, scalars) == ((rule.scalars.index("nesterov"), 1.0),)
    assert constants_of(RULES["ewa"], np.array([0.0, 1.0])) == ()  # nothing specialised


def test_a_large_16_bit_call_runs_the_written_in_threads_and_stores_the_general_bits():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays come from ml_dtypes")
    from fusedopt import config

    rule = RULES["momentum"]
    sig = signature(rule.arrays, ["bfloat16"] * 3, writes=rule.writes)
    n = config.NUMBA_PARALLEL_MIN_SIZE + 3
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(n).astype(ml_dtypes.bfloat16).view(np.uint16)
              for _ in rule.arrays]
    copies = [a.copy() for a in arrays]
    hyper = {**rule.defaults, "lr": 0.1, "dampening": 0.0}
    prepared = numba_cpu.prepare(rule, hyper, sig)
    assert prepared[5]  # constants written in
    numba_cpu.launch(rule, tuple(arrays), prepared)  # large: the threaded loop
    general = numba_cpu._drivers_for(rule, sig)[1]
    assert numba_cpu.call(general, *copies, prepared[0], parallel=True) == 0
    for a, b in zip(arrays, copies, strict=True):
        assert np.array_equal(a, b)
