"""On a GPU only: the measured plan for a CuPy trainer and a torch CUDA trainer holds in the
real training loop, measured by an independent count (a fresh CuPy pool; torch's peak)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HAS_GPU

import fusedopt as fo

pytestmark = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device here (these run on a GPU "
                                                    "machine: bench/gpu_check.sh)")


def test_cupy_mlp_plan_holds_in_its_real_loop():
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(0)
    m, layers, limit = 50_000, [256, 1024, 512, 10], 200_000_000
    X = cupy.asarray(rng.standard_normal((256, m), dtype=np.float32))
    Y = cupy.asarray(fo.one_hot(rng.integers(0, 10, m), 10).astype(np.float32))

    model = fo.MLP(layers, xp="cupy", seed=1)
    opt = fo.Adam(model.arena, lr=1e-3)
    plan = fo.measure_batch_size(lambda X_t, Y_t: model.train_step(X_t, Y_t, opt), X, Y,
                                 memory_limit=limit)
    assert plan.device == "cupy" and plan.fits and plan.confirmed_peak <= limit, plan.table()
    assert 1000 < plan.batch_size < m

    model = fo.MLP(layers, xp="cupy", seed=1)
    opt = fo.Adam(model.arena, lr=1e-3)
    pool = cupy.cuda.MemoryPool()  # counts only what the loop allocates (not the model)
    cupy.cuda.set_allocator(pool.malloc)
    try:
        for _ in range(2):
            for X_t, Y_t in fo.minibatches(X, Y, plan.batch_size, seed=0):
                model.train_step(X_t, Y_t, opt)
        cupy.cuda.get_current_stream().synchronize()
        reserved = pool.total_bytes()  # what the pool had to hold: at least the peak
    finally:
        cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)
    assert 0.95 <= reserved / plan.confirmed_peak <= 1.25, (reserved, plan.table())


def test_torch_cuda_plan_holds_in_its_real_loop():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    torch.manual_seed(0)
    X = torch.randn(200_000, 512, device="cuda")
    Y = torch.randint(0, 10, (200_000,), device="cuda")
    limit = 500_000_000

    def trainer():
        model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU(),
                                    torch.nn.Linear(2048, 10)).cuda()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(X_t, Y_t):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(X_t), Y_t).backward()
            opt.step()
        return step

    plan = fo.measure_batch_size(trainer(), X, Y, sample_axis=0, memory_limit=limit)
    assert plan.device == "torch-cuda" and plan.fits and plan.confirmed_peak <= limit
    step = trainer()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        order = torch.randperm(X.shape[0], device="cuda")
        for start in range(0, X.shape[0], plan.batch_size):
            index = order[start:start + plan.batch_size]
            step(X[index], Y[index])
    torch.cuda.synchronize()
    real = torch.cuda.max_memory_allocated() - base
    assert 0.95 <= real / plan.confirmed_peak <= 1.05, (real, plan.table())
