"""The NCCL communicator on a real GPU, as a world of one (NCCL refuses two ranks on one
device; more GPUs need mpiexec): its collectives run through NCCL itself, and ZeRO-1 and
data-parallel optimizers built on it (a world of one moves nothing) step as the plain one
on the same CuPy arena."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HAS_GPU

pytestmark = pytest.mark.skipif(
    not HAS_GPU, reason="no CUDA device here (these run on a GPU machine: bench/gpu_check.sh)")


@pytest.fixture(scope="module")
def comm():
    import cupy

    try:
        from cupy.cuda import nccl

        communicator = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    except Exception as exc:  # CuPy without NVIDIA's NCCL library
        pytest.skip(f"NCCL is not usable here ({type(exc).__name__}: {exc}); "
                    "pip install 'fusedopt[nccl]'")
    from fusedopt.distributed.nccl import NCCLComm
    from fusedopt.optim.parallel import SOLO

    yield NCCLComm(communicator, 0, 1, host=SOLO)
    cupy.cuda.get_current_stream().synchronize()


def test_the_collectives_of_a_world_of_one(comm):
    import cupy

    x = cupy.arange(10, dtype=cupy.float32)
    comm.all_reduce(x)
    part = cupy.zeros(10, cupy.float32)
    comm.reduce_scatter(x, part, [10])
    comm.all_gather(x, [10])
    cupy.cuda.get_current_stream().synchronize()
    np.testing.assert_array_equal(part.get(), np.arange(10, dtype=np.float32))
    np.testing.assert_array_equal(x.get(), np.arange(10, dtype=np.float32))


@pytest.mark.parametrize("shard_state", [False, True])
def test_a_step_through_nccl_is_the_plain_step(comm, shard_state):
    import cupy

    import fusedopt as fo

    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype(np.float32) for s in [(5, 3), (7,), (64, 33)]]
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in start]
    ours = fo.ParamArena([cupy.asarray(p) for p in start])
    plain = fo.ParamArena([cupy.asarray(p) for p in start])
    opt = fo.Adam(ours, lr=0.01, comm=comm, shard_state=shard_state, max_grad_norm=1.0)
    ref = fo.Adam(plain, lr=0.01, max_grad_norm=1.0)
    for _ in range(3):
        for arena in (ours, plain):
            for view, g in zip(arena.grads, grads, strict=True):
                view[...] = cupy.asarray(g)
        opt.step()
        ref.step()
    for a, b in zip(ours.params, plain.params, strict=True):
        np.testing.assert_array_equal(a.get(), b.get())
