"""Training on several processes: data parallelism and ZeRO-1 over MPI (CPU) or NCCL (GPU).

>>> from fusedopt import distributed
>>> comm = distributed.init()                      # MPI under mpiexec; else one process
>>> opt = fo.Adam(arena, lr=1e-3, comm=comm, shard_state=True)   # ZeRO-1
>>> ...                                            # each rank: its gradients in arena.grads
>>> opt.step()                                     # reduce-scatter, update, all-gather

Run it with ``mpiexec -n 2 python -m mpi4py train.py`` (``-m mpi4py`` makes a rank that
raises abort the whole job instead of leaving the others waiting in a collective).
``mpi4py`` and ``mpich`` are the ``fusedopt[mpi]`` extra; ``import fusedopt`` never
imports them. See :mod:`fusedopt.optim.parallel` for the steps themselves.
"""

from __future__ import annotations

import os

from fusedopt.optim.parallel import SOLO, ParallelOptimizer, Solo, blocks

#: environment variables that MPI launchers (MPICH's Hydra, Open MPI, PMIx, Slurm) set
LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                      "MPI_LOCALNRANKS", "SLURM_NTASKS")


def launched() -> bool:
    """Whether this process was started by an MPI launcher (with more than one rank)."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"):
        value = os.environ.get(name)
        if value is not None:
            return value.isdigit() and int(value) > 1
    return any(name in os.environ for name in LAUNCHER_VARIABLES[3:4])


def available() -> dict[str, bool]:
    """Which engines can be imported here: ``{"mpi": ..., "nccl": ...}`` (nothing is
    initialised)."""
    import importlib.util

    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    # CuPy's NCCL binding loads NVIDIA's library, which the nvidia-nccl wheels install
    return {"mpi": found("mpi4py"), "nccl": found("cupy") and found("nvidia.nccl")}


def init(backend: str | None = None, *, threads: bool = True):
    """A communicator for this process.

    Args:
        backend: ``"mpi"``, ``"nccl"`` (CuPy arrays on the GPU, its id exchanged over
            MPI) or None: MPI when started by an MPI launcher with several ranks, else
            the world of one process (:data:`SOLO`), which needs nothing installed.
        threads: under MPI, give each rank its share of the machine's cores for Numba's
            threads (cores / ranks on this machine), unless ``NUMBA_NUM_THREADS`` is set:
            2 ranks x 2 threads on 2 cores run 4 to 5 times slower than 2 x 1.
    """
    if backend not in (None, "mpi", "nccl", "solo"):
        raise ValueError(f"init: backend={backend!r}; choose 'mpi', 'nccl', 'solo' or None")
    if backend == "solo" or (backend is None and not launched()):
        return SOLO
    try:
        from fusedopt.distributed.mpi import MPIComm

        comm = MPIComm()
    except ImportError as exc:
        raise ImportError(f"init: MPI needs mpi4py and an MPI library: pip install "
                          f"'fusedopt[mpi]' ({exc})") from None
    if threads and "NUMBA_NUM_THREADS" not in os.environ:
        import numba

        share = max(1, (os.cpu_count() or 1) // comm.local_size())
        numba.set_num_threads(min(share, numba.config.NUMBA_NUM_THREADS))
    if backend == "nccl":
        from fusedopt.distributed.nccl import NCCLComm

        return NCCLComm.create(comm)
    return comm


__all__ = ["LAUNCHER_VARIABLES", "SOLO", "ParallelOptimizer", "Solo", "available", "blocks",
           "init", "launched"]
