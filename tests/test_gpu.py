"""On a GPU only: streams, DLPack with torch, and errors with real CuPy arrays.

The rule-by-rule checks against the oracle run on the GPU too: the ``backend``
fixture includes ``cupy`` whenever a CUDA device is present.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HAS_GPU
from oracle import run_and_check, sample_inputs

import fusedopt as fo
from fusedopt.kernels import RULES
from fusedopt.kernels.reference import adam as reference_adam

pytestmark = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device here (these run on a GPU "
                                                    "machine: bench/gpu_check.sh)")


@pytest.fixture
def cupy():
    import cupy

    return cupy


def adam_inputs(xp, n, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    host = [rng.standard_normal(n).astype(dtype) for _ in range(3)]
    host.append(np.abs(rng.standard_normal(n)).astype(dtype))
    return host, [xp.asarray(a) for a in host]


@pytest.mark.parametrize("n", [1, 3, 4, 1000, (1 << 20) + 3])
def test_adam_on_a_non_default_stream(cupy, n):
    host, device = adam_inputs(cupy, n)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        for t in (1, 2, 3):
            fo.adam_(*device, step=t, lr=1e-2)
    stream.synchronize()
    expected = [a.astype(np.float64) for a in host]
    for t in (1, 2, 3):
        p, m, v = reference_adam(expected[0], expected[1], expected[2], expected[3], step=t,
                                 lr=1e-2)
        expected = [p, expected[1], m, v]
    np.testing.assert_allclose(device[0].get(), expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(device[3].get(), expected[3], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_misaligned_views_take_the_scalar_kernel(cupy, offset):
    """Arrays not on a 16-byte boundary must not use 128-bit loads; results still match."""
    n = 1001
    host, _ = adam_inputs(np, n + offset)
    device = [cupy.asarray(a)[offset:] for a in host]
    fo.adam_(*device, step=1, lr=1e-2)
    p, _, _ = reference_adam(*(a[offset:].astype(np.float64) for a in host), step=1, lr=1e-2)
    np.testing.assert_allclose(device[0].get(), p, rtol=1e-5, atol=1e-6)


def test_mixed_numpy_and_cupy(cupy):
    with pytest.raises(TypeError, match="grad is a numpy array but param is a cupy array"):
        fo.sgd_(cupy.zeros(3, cupy.float32), np.zeros(3, np.float32), lr=0.1)


@pytest.mark.skipif(not HAS_GPU or __import__("cupy").cuda.runtime.getDeviceCount() < 2,
                    reason="needs two GPUs")
def test_arrays_on_two_gpus(cupy):
    with cupy.cuda.Device(0):
        a = cupy.zeros(3, cupy.float32)
    with cupy.cuda.Device(1):
        b = cupy.zeros(3, cupy.float32)
    with pytest.raises(ValueError, match="GPU 1"):
        fo.sgd_(a, b, lr=0.1)


def test_torch_cuda_tensors_through_dlpack(cupy):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    p = torch.ones(1000, device="cuda")
    g = torch.full((1000,), 0.5, device="cuda")
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    fo.adam_(p, g, m, v, step=1, lr=0.1)  # tensors straight in: viewed through DLPack
    torch.cuda.synchronize()
    assert torch.allclose(p, torch.full_like(p, 0.9))
    # and the explicit form, cupy.from_dlpack, round-tripping back to torch
    cp_p = cupy.from_dlpack(p)
    fo.sgd_(cp_p, cupy.from_dlpack(g), lr=0.2)
    back = torch.from_dlpack(cp_p)
    torch.cuda.synchronize()
    assert torch.allclose(back, torch.full_like(p, 0.8)) and back.data_ptr() == p.data_ptr()


@pytest.mark.parametrize("n", [1, 7, 4096, (1 << 20) + 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule_name", list(RULES))
def test_every_rule_matches_the_oracle_on_the_device(cupy, rule_name, dtype, n):
    """Without Hypothesis (the GPU machine has none): fixed seeds, several sizes and scales."""
    for seed, scale in ((0, 1.0), (1, 1e-3), (2, 1e3)):
        arrays64, hyper = sample_inputs(rule_name, (n,), seed=seed, scale=scale)
        run_and_check(rule_name, arrays64, hyper, dtype, "cupy", cupy)


def test_arena_optimizer_and_checkpoint_on_the_device(cupy, tmp_path):
    """fo.Adam over a CuPy ParamArena, clipping on, checkpoint to the CPU and back."""
    rng = np.random.default_rng(4)
    shapes = [(64, 32), (32,), (1000,)]
    host = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(6)]
    gpu_arena = fo.ParamArena([cupy.asarray(a) for a in host])
    cpu_arena = fo.ParamArena(host)
    gpu_opt = fo.Adam(gpu_arena, lr=1e-2, max_grad_norm=1.0, nonfinite="skip")
    cpu_opt = fo.Adam(cpu_arena, lr=1e-2, max_grad_norm=1.0, nonfinite="skip")
    for g in grads:
        for arena, xp in ((gpu_arena, cupy), (cpu_arena, np)):
            for view, value in zip(arena.grads, g, strict=True):
                view[...] = xp.asarray(value)
        assert gpu_opt.step() and cpu_opt.step()
    for a, b in zip(gpu_arena.params, cpu_arena.params, strict=True):
        np.testing.assert_allclose(a.get(), b, rtol=1e-5, atol=1e-6)
    fo.save(tmp_path / "gpu.npz", gpu_opt)
    fo.load(tmp_path / "gpu.npz", cpu_opt)
    for a, b in zip(gpu_arena.params, cpu_arena.params, strict=True):
        np.testing.assert_array_equal(a.get(), b)
    gpu_arena.grads[0][0, 0] = cupy.nan
    assert gpu_opt.step() is False and gpu_opt.skipped_steps == 1


def test_profile_catches_cupy_out_of_memory(cupy):
    """With CuPy's pool limited, the large probes run out of memory; the sweep goes on."""
    pool = cupy.get_default_memory_pool()
    rng = np.random.default_rng(0)
    X = cupy.asarray(rng.standard_normal((256, 8192)).astype(np.float32))
    Y = cupy.asarray(fo.one_hot(rng.integers(0, 10, 8192), 10))
    pool.set_limit(size=pool.total_bytes() + 24 * 2**20)
    try:
        profile = fo.profile_batch_sizes(X, Y, sizes=[64, 8192], layer_sizes=[256, 2048, 10],
                                         seconds=0.2, progress=False, noise_scale=False)
    finally:
        pool.set_limit(size=0)
    status = {p.batch_size: p.status for p in profile.probes}
    assert status[8192] == "out of memory" and status[64] == "ok"
    assert "OutOfMemoryError" in next(p.error for p in profile.probes if p.batch_size == 8192)


def test_a_capturable_arena_step_replays_in_a_cupy_graph(cupy):
    """fo.Adam(arena, capturable=True) with clipping and the non-finite skip: captured
    once on a stream after a warm-up step, replayed; each replay equals an eager step of
    the same optimizer on a copy (the skip of an inf gradient too), with no host sync."""
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(s).astype(np.float32) for s in [(300, 40), (40,), (7, 3)]]
    arenas = [fo.ParamArena([cupy.asarray(h) for h in host]) for _ in range(2)]
    options = dict(lr=1e-2, max_grad_norm=1.0, nonfinite="skip", capturable=True)
    opts = [fo.Adam(a, **options) for a in arenas]

    def fill(arena, t):
        g = np.random.default_rng(t)
        for k, buffer in enumerate(arena.grads):
            buffer[...] = cupy.asarray(g.standard_normal(buffer.shape).astype(np.float32))
            if t == 3 and k == 1:
                buffer[0] = np.inf

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        fill(arenas[0], 0)
        opts[0].step()  # warm-up: state, tables, constants and kernels made
        stream.synchronize()
        stream.begin_capture()
        opts[0].step()
        graph = stream.end_capture()
    fill(arenas[1], 0)
    opts[1].step()
    for t in range(1, 6):
        fill(arenas[0], t)
        with stream:
            graph.launch()
        stream.synchronize()
        fill(arenas[1], t)
        opts[1].step()
    cupy.cuda.Device().synchronize()
    for a, b in zip(arenas[0].params, arenas[1].params, strict=True):
        assert cupy.array_equal(a, b)
    assert (opts[0].step_count, opts[0].skipped_steps) == (5, 1)
