"""The CUDA multi-tensor kernel: compiled by NVRTC for every rule and storage, and run on
the host (tests/host_cuda.py) against the Numba multi-tensor driver, itself checked
against each tensor alone and the float64 oracle (test_multi_tensor.py). The host
build and the Numba drivers round alike (no fused multiply-adds): equal bits."""

from __future__ import annotations

import re

import numpy as np
import pytest
from rule_table import RULE_INFO, sample_arrays
from test_cuda_codegen import compile_ptx, nvrtc  # noqa: F401  (a fixture)

import fusedopt as fo
from fusedopt.backends import cuda_multi, cupy_cuda, numba_cpu
from fusedopt.backends.base import host_scalars
from fusedopt.kernels import RULES
from fusedopt.kernels.dtypes import homogeneous, signature

SIGNATURES = {
    "f32": lambda r: homogeneous(r.arrays, "float32"),
    "f64": lambda r: homogeneous(r.arrays, "float64"),
    "bf16-sr": lambda r: signature(r.arrays, ["bfloat16"] * len(r.arrays), writes=r.writes,
                                   stochastic=True),
    "f16-master": lambda r: signature(r.arrays, ["float16", "float16"]
                                      + ["float32"] * (len(r.arrays) - 2),
                                      writes=r.writes, master=True),
}


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
@pytest.mark.parametrize("storage", list(SIGNATURES))
@pytest.mark.parametrize("rule_name", list(RULES))
def test_every_multi_tensor_kernel_compiles_with_nvrtc(nvrtc, rule_name, storage, arch):  # noqa: F811
    rule = RULES[rule_name]
    if storage == "f16-master" and len(rule.arrays) < 3:
        storage = "bf16-sr"
    sig = SIGNATURES[storage](rule)
    ptx = compile_ptx(nvrtc, cuda_multi.cuda_multi_source(rule, sig), arch)
    assert re.search(rf"\.entry {cuda_multi.kernel_name(rule, sig)}\(", ptx)


@pytest.mark.parametrize("storage", ["f32", "f64", "f16-master"])
@pytest.mark.parametrize("rule_name", [n for n, r in RULES.items() if r.device_scalars])
def test_every_capturable_kernel_compiles_with_nvrtc(nvrtc, rule_name, storage):  # noqa: F811
    rule = RULES[rule_name]
    if storage == "f16-master" and len(rule.arrays) < 3:
        storage = "f32"
    sig = SIGNATURES[storage](rule)
    ptx = compile_ptx(nvrtc, cuda_multi.cuda_multi_source(rule, sig, capturable=True), "sm_90")
    assert re.search(rf"\.entry {cuda_multi.kernel_name(rule, sig, capturable=True)}\(", ptx)


def rows_for(rule, sizes, dtype, xp, seed=0):
    """One tuple of arrays per size, each a view at an odd element offset (misaligned)."""
    out = []
    for k, n in enumerate(sizes):
        values = sample_arrays(rule.name, (n,), seed=seed + k, scale=0.5)
        row = []
        for name in rule.arrays:
            buffer = xp.zeros(n + 3, dtype)
            view = buffer[1 + k % 2: 1 + k % 2 + n]
            view[...] = values[name]
            row.append(view)
        out.append(tuple(row))
    return out


def hyper_of(rule) -> dict:
    hyper = {**rule.defaults, **RULE_INFO[rule.name].sample_hyper}
    if rule.needs_step:
        hyper.setdefault("step", 3)
    return hyper


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule_name", list(RULES))
def test_one_launch_over_a_list_equals_the_cpu_driver(host_cupy, rule_name, dtype):
    from host_cuda import HostRawKernel

    rule = RULES[rule_name]
    sizes = [0, 1, 7, 33, 1000, 70_000, 3, 0]
    gpu = rows_for(rule, sizes, dtype, host_cupy)
    cpu = [tuple(np.array(a) for a in row) for row in gpu]
    sig = homogeneous(rule.arrays, dtype)
    HostRawKernel.launches = []
    cupy_cuda.launch_many(rule, gpu, cupy_cuda.prepare(rule, hyper_of(rule), sig))
    assert [name for name, _, _ in HostRawKernel.launches] == [
        cuda_multi.kernel_name(rule, sig)]  # one launch for the whole list
    numba_cpu.launch_many(rule, cpu, numba_cpu.prepare(rule, hyper_of(rule), sig))
    for k, (g, c) in enumerate(zip(gpu, cpu, strict=True)):
        for name, a, b in zip(rule.arrays, g, c, strict=True):
            assert np.array_equal(np.asarray(a), b, equal_nan=True), (rule_name, k, name)


def test_a_thousand_tensors_in_one_launch_through_the_optimizer(host_cupy):
    """fo.Adam over a list of (emulated) CuPy arrays launches once per step."""
    from host_cuda import HostRawKernel

    rng = np.random.default_rng(3)
    sizes = [int(n) for n in rng.integers(0, 40, 1200)]
    host = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    gpu = [host_cupy.asarray(h) for h in host]
    opt = fo.Adam(gpu, lr=1e-2)
    cpu_opt = fo.Adam([h.copy() for h in host], lr=1e-2)
    HostRawKernel.launches = []
    for _ in range(3):
        opt.step([host_cupy.asarray(g) for g in grads])
        cpu_opt.step(grads)
    assert len(HostRawKernel.launches) == 3
    for a, b in zip(gpu, cpu_opt.groups[0].tensors, strict=True):
        assert np.array_equal(np.asarray(a), b)


def test_shared_memory_is_refused_before_the_launch(host_cupy):
    from host_cuda import HostRawKernel

    rule = RULES["sgd"]
    buffer = host_cupy.zeros(30, np.float32)
    rows = [(buffer[:20], host_cupy.zeros(20, np.float32)),
            (buffer[10:30], host_cupy.zeros(20, np.float32))]
    HostRawKernel.launches = []
    with pytest.raises(ValueError, match="tensor 0's param and tensor 1's param share memory"):
        cupy_cuda.launch_many(rule, rows, cupy_cuda.prepare(
            rule, hyper_of(rule), homogeneous(rule.arrays, "float32")))
    assert HostRawKernel.launches == []


def test_the_gpu_fast_path_still_refuses_overlap_and_mismatch(host_cupy):
    """fo.<rule>_ on plain CuPy arrays takes a fast path (one address per array); it must
    name what the full checks name, before any write."""
    buffer = host_cupy.zeros(20, np.float32)
    param, grad = buffer[:10], host_cupy.zeros(10, np.float32)
    exp_avg, exp_avg_sq = buffer[5:15], host_cupy.zeros(10, np.float32)
    with pytest.raises(ValueError, match="param and exp_avg share memory"):
        fo.adam_(param, grad, exp_avg, exp_avg_sq, step=1)
    with pytest.raises(TypeError):  # float64 state with float32 parameters: the full checks
        fo.adam_(param, grad, host_cupy.zeros(10, np.float64), exp_avg_sq, step=1)
    with pytest.raises(ValueError, match="shape"):
        fo.adam_(param, grad, host_cupy.zeros(11, np.float32), exp_avg_sq, step=1)
    assert not np.asarray(buffer).any()
    arrays = [host_cupy.asarray(np.full(10, v, np.float32)) for v in (1.0, 0.5, 0.0, 0.0)]
    fo.adam_(*arrays, step=1, lr=0.1)
    np.testing.assert_allclose(np.asarray(arrays[0]), 0.9, rtol=1e-6)  # lr * m/sqrt(v) = lr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule_name", [n for n, r in RULES.items() if r.device_scalars])
def test_the_capturable_kernel_reads_per_tensor_scalars_and_the_skip_flag(host_cupy,
                                                                          rule_name, dtype):
    """Row t of the scalars for tensor t (each tensor at its own step), read from device
    memory: equal to the CPU twin's bits, and to each tensor's own host-scalar launch;
    a set skip flag writes nothing."""
    from host_cuda import HostRawKernel

    rule = RULES[rule_name]
    sizes = [0, 1, 7, 33, 1000, 70_000, 3]
    sig = homogeneous(rule.arrays, dtype)
    hypers = [dict(hyper_of(rule), **({"step": k + 1} if rule.needs_step else {}))
              for k in range(len(sizes))]
    table = np.array([host_scalars(rule, h, sig) for h in hypers], dtype=dtype)
    for skip in (0.0, 1.0):
        gpu = rows_for(rule, sizes, dtype, host_cupy)
        twin = [tuple(np.array(a) for a in row) for row in gpu]
        alone = [tuple(np.array(a) for a in row) for row in gpu]
        flag = np.array([skip], np.float32)
        HostRawKernel.launches = []
        cupy_cuda.launch_capturable(
            rule, tuple(tuple(a.data.ptr for a in row) for row in gpu), tuple(sizes), sig,
            table.ctypes.data, flag.ctypes.data)  # the emulated device's memory is the host's
        assert [name for name, _, _ in HostRawKernel.launches] == [
            cuda_multi.kernel_name(rule, sig, capturable=True)]
        numba_cpu.launch_capturable(
            rule, tuple(tuple(a.ctypes.data for a in row) for row in twin), tuple(sizes), sig,
            table, flag)
        if not skip:
            for row, h in zip(alone, hypers, strict=True):
                numba_cpu.launch(rule, row, numba_cpu.prepare(rule, h, sig))
        before = [tuple(np.array(a) for a in row) for row in rows_for(rule, sizes, dtype, np)]
        for k, (g, c, a, b) in enumerate(zip(gpu, twin, alone, before, strict=True)):
            for name, x, y, z, w in zip(rule.arrays, g, c, a, b, strict=True):
                assert np.array_equal(y, z if not skip else w, equal_nan=True), (k, name)
                assert np.array_equal(np.asarray(x), y, equal_nan=True), (rule_name, k, name)


@pytest.mark.parametrize("storage", ["float32", "float64", "bfloat16", "float16"])
def test_every_multi_tensor_norm_kernel_compiles_with_nvrtc(nvrtc, storage):  # noqa: F811
    ptx = compile_ptx(nvrtc, cuda_multi.norm_source(storage), "sm_90")
    assert re.search(rf"\.entry {cuda_multi.norm_kernel_name(storage)}\(", ptx)


@pytest.mark.parametrize("storage", ["float32", "float64", "bfloat16", "float16"])
def test_the_norm_of_a_list_in_one_launch_equals_the_oracles(host_cupy, storage):
    """A thousand tensors (empty, odd-sized, misaligned) in one launch: the accumulators of
    the float64 oracle (numpy_ref.norm_sums per tensor, summed), to float64 rounding; a NaN
    or an inf anywhere makes them non-finite."""
    from host_cuda import HostRawKernel

    from fusedopt.backends import numpy_ref
    from fusedopt.kernels.rounding import nearest as encode  # float32 -> 16-bit patterns

    rng = np.random.default_rng(5)
    sizes = [int(n) for n in rng.integers(0, 50, 1100)] + [0, 70_000, 1]
    values = [rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3) for n in sizes]
    if storage == "float64":  # every range: squares that overflow and that underflow
        values[3][:2], values[7][:1] = [1e200, -3e180], [1e-170]
    if storage in ("bfloat16", "float16"):
        host = [encode(v.astype(np.float32), storage) for v in values]
    else:
        host = [v.astype(storage) for v in values]
    arrays = []
    for k, h in enumerate(host):  # each a view at an odd element offset
        buffer = host_cupy.zeros(h.size + 1, h.dtype)
        buffer[k % 2: k % 2 + h.size] = h
        arrays.append(buffer[k % 2: k % 2 + h.size])
    HostRawKernel.launches = []
    got = cupy_cuda.norm_sums_many(arrays, [storage] * len(arrays))
    assert [name for name, _, _ in HostRawKernel.launches] == [
        cuda_multi.norm_kernel_name(storage)]
    expected = np.sum([numpy_ref.norm_sums(h, storage) for h in host], axis=0)
    np.testing.assert_allclose([float(x) for x in got], expected, rtol=1e-12, atol=0.0)
    if storage == "float64":
        assert expected[0] > 0 and expected[2] > 0  # the big and small ranges were used
    bad = np.array(host[4])
    low = storage in ("bfloat16", "float16")
    bad[0] = encode(np.array([np.inf], np.float32), storage)[0] if low else np.nan
    arrays[4][...] = bad
    assert not np.isfinite([float(x) for x in cupy_cuda.norm_sums_many(
        arrays, [storage] * len(arrays))]).all()
