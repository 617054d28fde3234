"""The rule language: refused at registration, naming the construct; one meaning everywhere.

* A rule that steps outside the language fails when it is registered, with the
  construct and its line named, and the registry is left as it was.
* Every function of the language gives the same bits in plain Python, in the
  Numba drivers and in the generated CUDA (compiled for the host), NaN, signed
  zeros and infinities included.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
from host_cuda import SHIM, aligned_empty, launcher

from fusedopt.backends import cuda_codegen, numba_codegen, numba_cpu
from fusedopt.kernels import RULES, VARIANTS, language
from fusedopt.kernels.dtypes import homogeneous
from fusedopt.kernels.language import (
    RuleLanguageError,
    copysign,
    exp,
    log,
    maximum,
    minimum,
    sign,
    sqrt,
)
from fusedopt.kernels.registry import GRAD_DOC, PARAM_DOC, real, register


@pytest.fixture
def scratch_registry():
    """Registrations made in a test are undone after it."""
    rules, variants = dict(RULES), dict(VARIANTS)
    yield
    RULES.clear()
    RULES.update(rules)
    VARIANTS.clear()
    VARIANTS.update(variants)


def _scalars(*, lr):
    return (lr,)


def register_plain(element):
    return register(arrays={"param": PARAM_DOC, "grad": GRAD_DOC}, writes=("param",),
                    host_scalars=_scalars, hyper=(real("lr", 0.1, "learning rate"),))(element)


# Each of these is outside the language.
def uses_power(param, grad, lr):
    return param - lr * grad**2


def uses_math_module(param, grad, lr):
    return param - lr * math.tanh(grad)


def uses_unknown_name(param, grad, lr):
    return param - lr * grad * undefined_scale  # noqa: F821


def uses_bool_value(param, grad, lr):
    return param - lr * (grad and lr)


def uses_literal_in_arithmetic(param, grad, lr):
    return param - 2.0 * lr * grad


def uses_a_loop(param, grad, lr):
    for _ in range(2):
        param = param - lr * grad
    return param


def uses_numpy_sqrt(param, grad, lr):
    return param - lr * np.sqrt(grad * grad)


def uses_max_of_one(param, grad, lr):
    return param - lr * max(grad)


def returns_two_for_one(param, grad, lr):
    return param - lr * grad, grad


def never_returns(param, grad, lr):
    param = param - lr * grad


@pytest.mark.parametrize("element, words", [
    (uses_power, ["Pow", "line"]),
    (uses_math_module, ["math.tanh", "line"]),
    (uses_unknown_name, ["undefined_scale"]),
    (uses_bool_value, ["used as a value"]),
    (uses_literal_in_arithmetic, ["literal 2.0", "host scalar"]),
    (uses_a_loop, ["For statement"]),
    (uses_numpy_sqrt, ["np.sqrt"]),
    (uses_max_of_one, ["max with 1 positional"]),
    (returns_two_for_one, ["returning 2 values for 1"]),
    (never_returns, ["does not end with `return`"]),
])
def test_a_rule_outside_the_language_is_refused_at_registration(scratch_registry, element,
                                                                 words):
    before = (dict(RULES), dict(VARIANTS))
    with pytest.raises(RuleLanguageError) as info:
        register_plain(element)
    message = str(info.value)
    assert element.__name__ in message
    for word in words:
        assert word in message, (word, message)
    assert (RULES, VARIANTS) == before  # nothing registered


def rebinds_sqrt(param, grad, lr):
    return param - lr * sqrt(grad * grad)


def test_a_function_name_bound_to_something_else_is_refused(scratch_registry, monkeypatch):
    """``sqrt`` must be the language's sqrt: a rule file that rebinds it cannot register."""
    monkeypatch.setitem(globals(), "sqrt", np.sqrt)
    with pytest.raises(RuleLanguageError, match=r"not bound to fusedopt\.kernels\.language\.sqrt"):
        register_plain(rebinds_sqrt)


def uses_conditions(param, grad, lr):
    step = lr if (grad > 0 and not param < 0) or lr > grad else lr * lr
    return param - step * grad


def test_conditions_and_comparisons_with_literals_are_in_the_language(scratch_registry):
    register_plain(uses_conditions)
    assert RULES["uses_conditions"].scalars == ("lr",)


def test_registration_checks_the_entry_itself(scratch_registry):
    def sgd_like(param, grad, lr):
        return param - lr * grad

    with pytest.raises(TypeError, match="host_scalars takes"):
        register(arrays={"param": "", "grad": ""}, writes=("param",),
                 host_scalars=lambda *, lr, beta: (lr,),
                 hyper=(real("lr", 0.1, ""),))(sgd_like)
    with pytest.raises(TypeError, match="must be its first arguments"):
        register(arrays={"grad": "", "param": ""}, writes=("param",), host_scalars=_scalars,
                 hyper=(real("lr", 0.1, ""),))(sgd_like)
    with pytest.raises(TypeError, match="registered twice"):
        register_plain(RULES["sgd"].element)


# --------------------------------------------------- one meaning on every backend
def every_function(o_sqrt, o_abs, o_min, o_max, o_maximum, o_minimum, o_copysign, o_sign,
                   o_exp, o_log, x, y):
    """Each function of the language, once."""
    return (sqrt(x), abs(x), min(x, y), max(x, y), maximum(x, y), minimum(x, y),
            copysign(x, y), sign(x), exp(x), log(x))


OUTPUTS = ("o_sqrt", "o_abs", "o_min", "o_max", "o_maximum", "o_minimum", "o_copysign",
           "o_sign", "o_exp", "o_log")
SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.5, -3.75, 1e-30, 1e30, math.inf, -math.inf, math.nan, 0.5]


@pytest.fixture
def every_function_rule(scratch_registry):
    register(arrays={**{o: "out" for o in OUTPUTS}, "x": "in", "y": "in"}, writes=OUTPUTS,
             host_scalars=lambda: (), hyper=())(every_function)
    return RULES["every_function"]


def test_the_language_names_every_function():
    assert set(language.FUNCTIONS) >= {"sqrt", "abs", "min", "max", "copysign", "sign"}
    assert [f for f in language.FUNCTIONS if f not in every_function.__code__.co_names] == []


def _python_meaning(a: float, b: float) -> list[float]:
    """What the language says each function gives (the functions bound in the language)."""
    with np.errstate(all="ignore"):
        return [math.sqrt(a) if a >= 0 else math.nan, abs(a), min(a, b), max(a, b),
                float(np.maximum(a, b)) if not (a == b == 0) else b,
                float(np.minimum(a, b)) if not (a == b == 0) else b,
                math.copysign(a, b), float(np.sign(a)), float(np.exp(np.float64(a))),
                float(np.log(np.float64(a))) if a >= 0 else math.nan]


def _python_results(dtype):
    x, y = np.meshgrid(np.array(SPECIAL, dtype), np.array(SPECIAL, dtype))
    x, y = x.ravel(), y.ravel()
    out = np.empty((len(OUTPUTS), x.size), dtype)
    with np.errstate(all="ignore"):
        for i, (a, b) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
            out[:, i] = _python_meaning(a, b)
    return x, y, out


def _assert_same(got, want, dtype, where):
    for k, name in enumerate(OUTPUTS):
        g, w = got[k], want[k]
        same = (g == w) | (np.isnan(g) & np.isnan(w))
        if name in ("o_exp", "o_log"):  # libm's float32 exp/log may differ in the last bit
            with np.errstate(invalid="ignore"):  # inf - inf
                same |= np.abs(g - w) <= 2 * np.spacing(np.abs(w).astype(dtype))
        else:  # exact, and the sign of a zero too
            same &= (np.signbit(g) == np.signbit(w)) | np.isnan(w)
        assert same.all(), (where, name, g[~same][:4], w[~same][:4])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_function_means_the_same_in_numba(every_function_rule, dtype):
    rule = every_function_rule
    sig = homogeneous(rule.arrays, dtype)
    source = (numba_codegen.HEADER + numba_codegen.element_source(rule)
              + numba_codegen.driver_source(rule, sig))
    module = numba_cpu.in_memory_module("fusedopt_language_test", source)
    x, y, want = _python_results(dtype)
    outs = [np.zeros_like(x) for _ in OUTPUTS]
    driver = getattr(module, numba_codegen.driver_name(rule, sig, "serial"))
    with np.errstate(all="ignore"):
        assert driver(*outs, x, y, np.zeros(0, dtype)) == 0
    _assert_same(np.array(outs), want, dtype, "numba")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_function_means_the_same_in_the_generated_cuda(every_function_rule, dtype,
                                                             tmp_path):
    import shutil
    import subprocess

    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no host C++ compiler (g++) to run the generated CUDA source")
    rule = every_function_rule
    name = np.dtype(dtype).name
    kernel = cuda_codegen.kernel_names(rule, name)[0]
    source = tmp_path / "every.cpp"
    source.write_text(SHIM + cuda_codegen.cuda_source(rule, name) + launcher(rule, name, kernel))
    library = tmp_path / "every.so"
    subprocess.run([compiler, "-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC",
                    str(source), "-o", str(library)], check=True, capture_output=True)
    lib = ctypes.CDLL(str(library))
    x, y, want = _python_results(dtype)
    arrays = [aligned_empty(x.size, dtype) for _ in OUTPUTS] + [aligned_empty(x.size, dtype)
                                                                for _ in "xy"]
    arrays[-2][...], arrays[-1][...] = x, y
    launch = getattr(lib, f"launch_{kernel}")
    launch.argtypes = ([ctypes.c_uint, ctypes.c_uint] + [ctypes.c_void_p] * len(arrays)
                       + [ctypes.c_longlong])
    launch(1, 7, *(a.ctypes.data for a in arrays), x.size)
    _assert_same(np.array(arrays[: len(OUTPUTS)]), want, dtype, "cuda")
