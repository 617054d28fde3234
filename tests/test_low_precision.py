"""bfloat16 and float16 storage: every rule, in the dtype combinations users train with,
against the float64 oracle followed by the stated rounding, on every backend: the Numba
drivers, the NumPy reference, and the generated CUDA compiled for the host."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from lowp_oracle import NUMPY_DTYPE, check_call, ml_dtypes, to_storage
from strategies import inputs

import fusedopt as fo
from fusedopt.backends import cuda_codegen
from fusedopt.backends.base import rounding_words
from fusedopt.kernels import RULES
from fusedopt.kernels.dtypes import signature

BF16, F16, F32 = "bfloat16", "float16", "float32"
# (parameter, gradient, state, master, stochastic): the recipes of the mixed-precision issue
COMBOS = {
    "bf16 params, fp32 state": (BF16, BF16, F32, False, False),
    "bf16 everything": (BF16, BF16, BF16, False, False),
    "bf16 everything, stochastic": (BF16, BF16, BF16, False, True),
    "fp32 master, bf16 params (Apex)": (BF16, BF16, F32, True, False),
    "fp32 master, fp16 params, fp32 grads, stochastic": (F16, F32, F32, True, True),
    "fp16 params, bf16 state": (F16, F16, BF16, False, False),
    "fp32 params, bf16 state, stochastic (torchtitan)": (F32, F32, BF16, False, True),
    "bf16 params and state, fp32 master and grads, stochastic": (BF16, F32, BF16, True, True),
}
EVERY_RULE = ["bf16 everything", "fp32 master, fp16 params, fp32 grads, stochastic",
              "fp32 params, bf16 state, stochastic (torchtitan)"]
CASES = ([("adam", c) for c in COMBOS]
         + [(r, c) for r in RULES if r != "adam" for c in EVERY_RULE])


def storage_of(rule_name: str, combo: str) -> dict:
    param, grad, state, _, _ = COMBOS[combo]
    rule = RULES[rule_name]
    return {a: param if k == 0 else (state if a in rule.writes else grad)
            for k, a in enumerate(rule.arrays)}


def make_call(rule_name: str, combo: str, arrays64, hyper):
    """The stored arrays (by name), their float64 values, the master copy, the kwargs."""
    rule = RULES[rule_name]
    _, _, _, master, stochastic = COMBOS[combo]
    storage = storage_of(rule_name, combo)
    stored = {a: to_storage(v, storage[a]).reshape(np.shape(v))
              for a, v in zip(rule.arrays, arrays64, strict=True)}
    before64 = {a: v.astype(np.float64) for a, v in stored.items()}
    kwargs = dict(hyper)
    master_copy = None
    if master:
        master_copy = np.asarray(arrays64[0], np.float32).copy()
        kwargs["master"] = master_copy
    if stochastic:
        kwargs.update(stochastic_rounding=True, seed=12345)
        kwargs.setdefault("step", 7)
    return stored, before64, master_copy, kwargs, storage


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("rule_name, combo", CASES)
def test_every_rule_and_recipe_matches_the_oracle(rule_name, combo, backend):
    rule = RULES[rule_name]
    stochastic = COMBOS[combo][4]

    @settings(max_examples=25)  # 70 cases: the suite stays well inside CI's budget
    @given(inputs(rule_name))
    def check(drawn):
        arrays64, hyper = drawn
        stored, before64, master, kwargs, storage = make_call(rule_name, combo, arrays64, hyper)
        master_before = None if master is None else master.copy()
        fo.functional.FUNCTIONS[rule_name + "_"](*(stored[a] for a in rule.arrays), **kwargs,
                                                 backend=backend)
        check_call(rule_name, before64, stored, hyper, storage, stochastic, master_before,
                   master)
        for a in rule.arrays:
            if a not in rule.writes:  # read-only inputs are untouched
                np.testing.assert_array_equal(stored[a].astype(np.float64), before64[a])

    check()


@pytest.mark.parametrize("rule_name, combo", CASES)
def test_the_backends_give_the_same_bits(rule_name, combo):
    """Nearest or stochastic, the Numba drivers and the NumPy reference store the same bits
    where their float32 math agrees: the rounding and its random bits are one definition."""
    rule = RULES[rule_name]
    arrays64 = [np.random.default_rng(k).standard_normal(1000) for k in range(len(rule.arrays))]
    arrays64 = [np.abs(a) if name.endswith("sq") or name == "sq_avg" else a
                for a, name in zip(arrays64, rule.arrays, strict=True)]
    from oracle import sample_inputs

    _, hyper = sample_inputs(rule_name, (4,))
    results = []
    for backend in ("numba", "numpy"):
        stored, _, _, kwargs, _ = make_call(rule_name, combo, arrays64, hyper)
        fo.functional.FUNCTIONS[rule_name + "_"](*(stored[a] for a in rule.arrays), **kwargs,
                                                 backend=backend)
        results.append({a: stored[a].view(np.uint8) for a in rule.writes})
    storage = storage_of(rule_name, combo)
    for a in rule.writes:
        if storage[a] not in (BF16, F16) or (COMBOS[combo][3] and a == rule.arrays[0]):
            continue  # float32 results: the reference orders its float32 math differently
        differ = np.mean(results[0][a] != results[1][a])
        assert differ <= 0.01, f"{a}: {differ:.1%} of the bytes differ between the backends"


# --------------------------------------------------- the generated CUDA, compiled for the host
@pytest.fixture(scope="module")
def host_lowp(tmp_path_factory):
    from host_cuda import SHIM, launcher

    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no host C++ compiler (g++) to run the generated CUDA source on the CPU")
    parts, signatures = [SHIM], {}
    for rule_name, combo in CASES:
        rule = RULES[rule_name]
        _, _, _, master, stochastic = COMBOS[combo]
        storage = storage_of(rule_name, combo)
        sig = signature(rule.arrays, [storage[a] for a in rule.arrays], writes=rule.writes,
                        master=master, stochastic=stochastic)
        signatures[rule_name, combo] = sig
        parts.append(cuda_codegen.cuda_source(rule, sig))
        parts.extend(launcher(rule, sig, k) for k in cuda_codegen.kernel_names(rule, sig))
    directory = tmp_path_factory.mktemp("lowp_cuda_on_host")
    (directory / "kernels.cpp").write_text("\n".join(parts))
    subprocess.run([compiler, "-O1", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC",
                    str(directory / "kernels.cpp"), "-o", str(directory / "kernels.so")],
                   check=True, capture_output=True)
    return ctypes.CDLL(str(directory / "kernels.so")), signatures


@pytest.mark.parametrize("variant", ["scalar", "vector"])
@pytest.mark.parametrize("rule_name, combo", CASES)
def test_the_cuda_kernels_store_the_numba_drivers_bits(host_lowp, rule_name, combo, variant):
    """The same call on the CPU and in the generated CUDA (any launch shape) stores the same
    bits, stochastic rounding included: nothing but the seed decides the random bits."""
    from host_cuda import aligned_empty

    library, signatures = host_lowp
    rule, sig = RULES[rule_name], signatures[rule_name, combo]
    from oracle import sample_inputs

    arrays64, hyper = sample_inputs(rule_name, (301,), seed=5)
    step = hyper.get("step", 7)  # the rounding's step; the rule's own where it has one
    scalars = rule.host_scalars(**{**rule.defaults, **hyper})
    words = rounding_words(rule, sig, (12345, step))

    @given(st.integers(1, 4), st.integers(1, 9))
    def check(grid, block):
        cpu, _, _, kwargs, _ = make_call(rule_name, combo, arrays64, hyper)
        if sig.stochastic:
            kwargs["step"] = step
        fo.functional.FUNCTIONS[rule_name + "_"](*(cpu[a] for a in rule.arrays), **kwargs)
        gpu, _, master, _, _ = make_call(rule_name, combo, arrays64, hyper)
        work = []
        for a in rule.arrays:
            out = aligned_empty(gpu[a].size, gpu[a].dtype)
            out[...] = gpu[a]
            work.append(out)
        if master is not None:
            out = aligned_empty(master.size, np.float32)
            out[...] = master
            work.append(out)
        kernel = cuda_codegen.kernel_names(rule, sig)[variant == "vector"]
        function = getattr(library, f"launch_{kernel}")
        scalar_type = ctypes.c_double if sig.compute == np.float64 else ctypes.c_float
        keys = [words[1 + rule.arrays.index(w)] for w in cuda_codegen.rounded_arrays(rule, sig)]
        rounding = [ctypes.c_longlong(words[0]), *(ctypes.c_uint(k) for k in keys)] \
            if sig.stochastic else []
        function.argtypes = None
        function(ctypes.c_uint(grid), ctypes.c_uint(block),
                 *(ctypes.c_void_p(w.ctypes.data) for w in work),
                 *(scalar_type(s) for s in scalars), *rounding,
                 ctypes.c_longlong(work[0].size))
        for k, a in enumerate(rule.arrays):
            if a in rule.writes:
                np.testing.assert_array_equal(work[k].view(np.uint8), cpu[a].view(np.uint8),
                                              err_msg=f"{a} differs from the CPU's bits")

    check()


def test_nvrtc_compiles_every_low_precision_recipe():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:
        pytest.skip(f"NVRTC is not available ({exc}): pip install 'fusedopt[cuda13]'")
    from test_cuda_codegen import compile_ptx

    for rule_name, combo in CASES[:8]:
        rule = RULES[rule_name]
        _, _, _, master, stochastic = COMBOS[combo]
        storage = storage_of(rule_name, combo)
        sig = signature(rule.arrays, [storage[a] for a in rule.arrays], writes=rule.writes,
                        master=master, stochastic=stochastic)
        ptx = compile_ptx(nvrtc, cuda_codegen.cuda_source(rule, sig), "sm_90")
        assert cuda_codegen.kernel_names(rule, sig)[1] in ptx


def test_ml_dtypes_and_torch_bfloat16_are_the_same_call():
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(100).astype(np.float32) for _ in range(4)]
    values[3] = np.abs(values[3])
    numpy_arrays = [v.astype(ml_dtypes.bfloat16) for v in values]
    torch_tensors = [torch.from_numpy(v).to(torch.bfloat16) for v in values]
    fo.adam_(*numpy_arrays, step=3, stochastic_rounding=True, seed=9)
    fo.adam_(*torch_tensors, step=3, stochastic_rounding=True, seed=9)
    for a, t in zip(numpy_arrays, torch_tensors, strict=True):
        bits = t.view(torch.int16).numpy().view(np.uint16)
        np.testing.assert_array_equal(a.view(np.uint16), bits)
    assert NUMPY_DTYPE[BF16] == numpy_arrays[0].dtype


def _every_combination():
    """Every storage combination the dtype rules allow for Adam (and each with a master copy
    and stochastic rounding where they apply)."""
    out = []
    for param in (F32, BF16, F16):
        for grad in sorted({param, F32}):
            for state in sorted({F32, BF16} | ({F16} if param == F16 else set())):
                for master in ([False, True] if param != F32 else [False]):
                    for stochastic in (False, True):
                        out.append((param, grad, state, master, stochastic))
    return out


@pytest.mark.parametrize("param, grad, state, master, stochastic", _every_combination())
def test_every_allowed_combination_matches_the_oracle(param, grad, state, master, stochastic):
    name = f"{param}/{grad}/{state}/{master}/{stochastic}"
    COMBOS[name] = (param, grad, state, master, stochastic)
    try:
        @settings(max_examples=8)
        @given(inputs("adam"))
        def check(drawn):
            arrays64, hyper = drawn
            stored, before64, master_copy, kwargs, storage = make_call("adam", name, arrays64,
                                                                       hyper)
            # float16 holds at most 65504: drawn state beyond it is not a state to update
            assume(all(np.isfinite(v).all() for v in before64.values()))
            master_before = None if master_copy is None else master_copy.copy()
            fo.adam_(*(stored[a] for a in RULES["adam"].arrays), **kwargs)
            check_call("adam", before64, stored, hyper, storage, stochastic, master_before,
                       master_copy)

        check()
    finally:
        del COMBOS[name]
