"""Does overlapping a reduce-scatter with the update pay on this machine? (issue 13's buckets)

    mpiexec -n 2 python -m mpi4py bench/mpi_overlap.py              # MPICH's default progress
    MPIR_CVAR_ASYNC_PROGRESS=1 mpiexec -n 2 python -m mpi4py bench/mpi_overlap.py

Times, on 10.76M float32 (the 157-tensor set) over W ranks: a blocking
``Reduce_scatter_block``, a memory-bound pass over one rank's block standing in for the
update, the two one after the other, and a nonblocking ``Ireduce_scatter_block`` with the
pass in between (what a bucketed step would do). Without an asynchronous progress thread
MPICH moves a nonblocking collective only inside MPI calls, so nothing overlaps; with one,
the thread takes a core the update needs.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
n = 10_760_192
block = n // comm.Get_size()
grads = np.ones(n, np.float32)
summed = np.empty(block, np.float32)
x, y = np.ones(block, np.float32), np.empty(block, np.float32)


def update() -> None:
    np.multiply(x, 1.0001, out=y)
    np.sqrt(y, out=y)
    np.add(y, x, out=y)


def median_ms(step) -> float:
    times = []
    for _ in range(9):
        comm.Barrier()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def overlapped() -> None:
    request = comm.Ireduce_scatter_block(grads, summed)
    update()
    request.Wait()


blocking = median_ms(lambda: comm.Reduce_scatter_block(grads, summed))
alone = median_ms(update)
sequential = median_ms(lambda: (comm.Reduce_scatter_block(grads, summed), update()))
overlap = median_ms(overlapped)
if comm.Get_rank() == 0:
    print(f"reduce-scatter {blocking:.1f} ms, update {alone:.1f} ms, one after the other "
          f"{sequential:.1f} ms, nonblocking with the update in between {overlap:.1f} ms")
