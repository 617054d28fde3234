"""The NCCL communicator's logic, with no GPU: NCCL's collectives stood in for by W threads
that read each other's memory through the addresses the communicator passes.

The stand-in implements NCCL's documented semantics (reduce-scatter of equal blocks,
in-place all-gather, reduce and broadcast to a root); the oracle is NumPy on the same
data, and one process's optimizer for a ZeRO-1 step made through it.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

import fusedopt as fo
from fusedopt.distributed import nccl as nccl_comm

STREAM = 0x5EED  # what the communicator must pass as every collective's stream
_NUMPY = {7: np.float32, 8: np.float64, 6: np.uint16, 4: np.int64, 1: np.uint8}


def _view(ptr: int, count: int, code: int) -> np.ndarray:
    dtype = np.dtype(_NUMPY[code])
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype)


class World:
    """What W ranks' NCCL communicators share: a barrier and each rank's call."""

    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=20)
        self.calls: list = [None] * size


class StandInNccl:
    """One rank's ``NcclCommunicator``: each collective in three phases (post the call;
    compute this rank's result from everyone's buffers; write it), so that in-place
    collectives read before anyone writes."""

    def __init__(self, world: World, rank: int):
        self.world, self.rank = world, rank
        self.calls: list[tuple] = []  # (collective, count, dtype code, root)

    def _collective(self, call, result):
        w = self.world
        w.calls[self.rank] = call
        w.barrier.wait()
        out = result(w.calls)
        w.barrier.wait()
        if out is not None:
            target, values = out
            target[...] = values
        w.barrier.wait()

    def allReduce(self, send, recv, count, code, op, stream):
        assert stream == STREAM, "allReduce not on CuPy's current stream"
        self.calls.append(("allReduce", count, code, None))
        self._collective((send, count, code), lambda calls: (
            _view(recv, count, code), sum(_view(s, n, c).copy() for s, n, c in calls)))

    def reduceScatter(self, send, recv, count, code, op, stream):
        assert stream == STREAM, "reduceScatter not on CuPy's current stream"
        self.calls.append(("reduceScatter", count, code, None))
        r = self.rank
        self._collective((send, count, code), lambda calls: (
            _view(recv, count, code),
            sum(_view(s, count * self.world.size, c)[r * count:(r + 1) * count].copy()
                for s, _, c in calls)))

    def allGather(self, send, recv, count, code, stream):
        assert stream == STREAM, "allGather not on CuPy's current stream"
        self.calls.append(("allGather", count, code, None))
        # NCCL's in-place all-gather: this rank's block already at its place in the output
        assert send == recv + self.rank * count * np.dtype(_NUMPY[code]).itemsize
        self._collective((send, count, code), lambda calls: (
            _view(recv, count * self.world.size, code),
            np.concatenate([_view(s, n, c).copy() for s, n, c in calls])))

    def reduce(self, send, recv, count, code, op, root, stream):
        assert stream == STREAM, "reduce not on CuPy's current stream"
        self.calls.append(("reduce", count, code, root))
        self._collective((send, count, code), lambda calls: (
            (_view(recv, count, code), sum(_view(s, n, c).copy() for s, n, c in calls))
            if self.rank == root else None))

    def broadcast(self, send, recv, count, code, root, stream):
        assert stream == STREAM, "broadcast not on CuPy's current stream"
        self.calls.append(("broadcast", count, code, root))
        self._collective((send, count, code), lambda calls: (
            _view(recv, count, code), _view(calls[root][0], count, code).copy()))


def run_ranks(size: int, body) -> list:
    """``body(comm)`` on ``size`` threads, one NCCLComm each; their results in rank order."""
    world = World(size)
    results, errors = [None] * size, []

    def rank_main(r):
        try:
            results[r] = body(nccl_comm.NCCLComm(StandInNccl(world, r), r, size, host=None))
        except Exception as exc:  # raised below, in the test's thread
            errors.append(exc)
            world.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


@pytest.fixture(autouse=True)
def host_pointers(monkeypatch):
    monkeypatch.setattr(nccl_comm, "_ptr", lambda a: a.ctypes.data)
    monkeypatch.setattr(nccl_comm, "_stream", lambda: STREAM)


@pytest.mark.parametrize("size, n", [(2, 10), (3, 11), (4, 3), (3, 0)])
def test_the_collectives_match_numpy(size, n):
    from fusedopt.optim.parallel import blocks

    data = [np.arange(n, dtype=np.float32) * (r + 1) for r in range(size)]
    counts, displs = blocks(n, size)
    total = sum(data)

    def body(comm):
        r = comm.rank
        summed = data[r].copy()
        comm.all_reduce(summed)
        part = np.zeros(counts[r], np.float32)
        comm.reduce_scatter(data[r].copy(), part, counts)
        gathered = np.zeros(n, np.float32)
        gathered[displs[r]:displs[r] + counts[r]] = total[displs[r]:displs[r] + counts[r]]
        comm.all_gather(gathered, counts)
        return summed, part, gathered

    for r, (summed, part, gathered) in enumerate(run_ranks(size, body)):
        np.testing.assert_array_equal(summed, total)
        np.testing.assert_array_equal(part, total[displs[r]:displs[r] + counts[r]])
        np.testing.assert_array_equal(gathered, total)


def test_a_zero1_step_through_nccl_equals_one_process():
    shapes = [(5, 3), (7,), (2, 2)]  # 26 elements over 3 ranks: blocks 8, 8, 10
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]

    def body(comm):
        arena = fo.ParamArena(start)
        opt = fo.Adam(arena, lr=0.01, comm=comm, shard_state=True, backend="numba")
        for _ in range(3):
            for view, g in zip(arena.grads, grads[comm.rank], strict=True):
                view[...] = g
            opt.step()
        return [p.copy() for p in arena.params]

    results = run_ranks(3, body)
    plain = fo.ParamArena(start)
    ref = fo.Adam(plain, lr=0.01)
    for _ in range(3):
        for k, view in enumerate(plain.grads):
            view[...] = sum(g[k] for g in grads) / 3
        ref.step()
    for params in results:
        for got, want in zip(params, plain.params, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_the_calls_counts_and_roots_are_those_of_the_layout():
    from fusedopt.optim.parallel import blocks

    n, size = 11, 3  # blocks 3, 3, 5: equal blocks of 3, and a tail of 2 on the last rank
    counts, _ = blocks(n, size)
    seen = {}

    def body(comm):
        buffer = np.zeros(n, np.float32)
        comm.reduce_scatter(buffer.copy(), np.zeros(counts[comm.rank], np.float32), counts)
        comm.all_gather(buffer, counts)
        half = np.zeros(n, np.float16)  # 16-bit parameters move as float16 words
        comm.all_gather(half, counts)
        seen[comm.rank] = comm.comm.calls

    run_ranks(size, body)
    for calls in seen.values():
        assert calls == [("reduceScatter", 3, 7, None), ("reduce", 2, 7, 2),
                         ("allGather", 3, 7, None), ("broadcast", 2, 7, 2),
                         ("allGather", 3, 6, None), ("broadcast", 2, 6, 2)]
