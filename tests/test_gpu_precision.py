"""16-bit storage on a CUDA GPU: the same call stores the same bits as on the CPU.

Stochastic rounding draws its bits from (seed, step, element index, array), and the
kernels round as the CPU drivers do (no fused multiply-adds), so a call on torch CUDA
bfloat16 tensors or CuPy float16 arrays must store exactly what the Numba drivers store
for the same values. These run on a GPU machine (bench/gpu_check.sh)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HAS_GPU
from lowp_oracle import ml_dtypes

import fusedopt as fo
from fusedopt.kernels import RULES

pytestmark = pytest.mark.skipif(
    not HAS_GPU, reason="no CUDA device here (these run on a GPU machine: bench/gpu_check.sh)")

RECIPES = {"bf16 everything, stochastic": ("bfloat16", "bfloat16", False, True),
           "fp16 params, fp32 master": ("float16", "float32", True, False),
           "fp32 params, bf16 state, stochastic": ("float32", "bfloat16", False, True)}


def _values(rule_name: str, n: int):
    rng = np.random.default_rng(7)
    rule = RULES[rule_name]
    values = [rng.standard_normal(n).astype(np.float32) for _ in rule.arrays]
    return [np.abs(v) if name in ("exp_avg_sq", "sq_avg", "max_exp_avg_sq") else v
            for v, name in zip(values, rule.arrays, strict=True)]


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("rule_name", [r for r in RULES if r != "ewa"])
def test_a_gpu_call_stores_the_cpu_bits(rule_name, recipe):
    torch = pytest.importorskip("torch", reason="torch moves bfloat16 tensors to the GPU")
    rule = RULES[rule_name]
    param, state, master, stochastic = RECIPES[recipe]
    n = 100_003  # a tail for the vector kernel
    numpy_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16,
                   "float32": np.float32}
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16,
                   "float32": torch.float32}
    storage = [param if name not in rule.writes or k == 0 else state
               for k, name in enumerate(rule.arrays)]
    values = _values(rule_name, n)
    cpu = [v.astype(numpy_dtype[s]) for v, s in zip(values, storage, strict=True)]
    gpu = [torch.from_numpy(v).to(torch_dtype[s]).cuda()
           for v, s in zip(values, storage, strict=True)]
    kwargs = {"lr": 1e-3, "step": 5}
    if master:
        kwargs_cpu = {**kwargs, "master": values[0].copy()}
        kwargs_gpu = {**kwargs, "master": torch.from_numpy(values[0].copy()).cuda()}
    else:
        kwargs_cpu = kwargs_gpu = kwargs
    if stochastic:
        kwargs_cpu = {**kwargs_cpu, "stochastic_rounding": True, "seed": 99}
        kwargs_gpu = {**kwargs_gpu, "stochastic_rounding": True, "seed": 99}
    function = fo.functional.FUNCTIONS[rule_name + "_"]
    function(*cpu, **kwargs_cpu)
    function(*gpu, **kwargs_gpu)
    torch.cuda.synchronize()
    for name, a, t in zip(rule.arrays, cpu, gpu, strict=True):
        if name in rule.writes:
            bits = t.cpu().view(torch.int16 if t.element_size() == 2 else torch.int32).numpy()
            np.testing.assert_array_equal(a.view(bits.dtype), bits,
                                          err_msg=f"{name}: the GPU stored other bits")


def test_an_fp16_arena_with_master_weights_resumes_on_the_cpu(tmp_path):
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(s).astype(np.float16) for s in [(300,), (17, 5)]]
    arena = fo.ParamArena([cupy.asarray(h) for h in host])
    opt = fo.Adam(arena, lr=1e-2, master_weights=True, stochastic_rounding=True, seed=4)
    cpu_arena = fo.ParamArena([h.copy() for h in host])
    cpu_opt = fo.Adam(cpu_arena, lr=1e-2, master_weights=True, stochastic_rounding=True, seed=4)
    for _ in range(3):
        grads = [rng.standard_normal(h.shape).astype(np.float16) for h in host]
        for g_gpu, g_cpu, g in zip(arena.grads, cpu_arena.grads, grads, strict=True):
            g_gpu[...] = cupy.asarray(g)
            g_cpu[...] = g
        opt.step()
        cpu_opt.step()
    for a, b in zip(arena.params, cpu_arena.params, strict=True):
        np.testing.assert_array_equal(cupy.asnumpy(a).view(np.uint16), b.view(np.uint16))
    fo.save(tmp_path / "gpu.npz", opt)
    fresh = fo.Adam(fo.ParamArena([np.zeros_like(h) for h in host]), lr=1e-2,
                    master_weights=True, stochastic_rounding=True)
    fo.load(tmp_path / "gpu.npz", fresh)  # a GPU checkpoint resumes on the CPU
