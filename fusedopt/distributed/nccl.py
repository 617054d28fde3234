"""The NCCL communicator: CuPy arrays reduced and gathered on the GPU (``cupy.cuda.nccl``).

One rank per GPU (NCCL refuses two ranks on one device), started by ``mpiexec``: rank 0
makes NCCL's unique id and MPI broadcasts it, so one launcher serves both engines.
Every collective is queued on CuPy's current stream, with no host synchronisation.

NCCL's reduce-scatter and all-gather take equal blocks; the blocks of
:func:`fusedopt.optim.parallel.blocks` are equal but for the last rank's tail (fewer than
W items), which goes to the last rank by a ``reduce`` and back by a ``broadcast``.
The all-gather is in place (rank r's block already sits at ``r * block``, which NCCL
allows). Checkpoints' gathers, rare and to the host anyway, go through MPI.
"""

from __future__ import annotations

import numpy as np

from fusedopt.optim.parallel import block_of

#: NCCL's data type of each NumPy dtype fusedopt moves (16-bit floats as float16:
#: moving is exact, and bfloat16 is only ever summed in float32)
_DTYPES = {"float32": 7, "float64": 8, "float16": 6, "int64": 4, "uint16": 6, "uint8": 1}
_SUM = 0


def _ptr(array) -> int:
    """A CuPy array's device address."""
    return array.data.ptr


def _stream() -> int:
    """CuPy's current stream, where every collective is queued."""
    import cupy

    return cupy.cuda.get_current_stream().ptr


def _dtype(array) -> int:
    kind = np.dtype(array.dtype)
    name = "uint16" if kind.kind == "V" else kind.name  # bfloat16 patterns
    if name not in _DTYPES:
        raise TypeError(f"NCCL: cannot move {kind} arrays")
    return _DTYPES[name]


class NCCLComm:
    """A :class:`fusedopt.optim.parallel.Solo`-like communicator over an NCCL
    communicator (``comm``), with ``host`` (an MPI communicator) for the gathers."""

    backend = "nccl"

    def __init__(self, comm, rank: int, size: int, host):
        self.comm, self.rank, self.size, self.host = comm, rank, size, host

    @classmethod
    def create(cls, host) -> NCCLComm:
        """Over every rank of ``host`` (a :class:`~fusedopt.distributed.mpi.MPIComm`): this
        rank takes GPU ``local rank % GPUs``, rank 0's NCCL id is broadcast over MPI."""
        import cupy
        from cupy.cuda import nccl

        local = host.comm.Split_type(host._MPI.COMM_TYPE_SHARED)
        cupy.cuda.Device(local.Get_rank() % cupy.cuda.runtime.getDeviceCount()).use()
        uid = nccl.get_unique_id() if host.rank == 0 else None
        uid = host.comm.bcast(uid, root=0)
        return cls(nccl.NcclCommunicator(host.size, uid, host.rank), host.rank, host.size,
                   host)

    def all_reduce(self, array) -> None:
        self.comm.allReduce(_ptr(array), _ptr(array), array.size, _dtype(array), _SUM,
                            _stream())

    def reduce_scatter(self, send, recv, counts) -> None:
        block = block_of(counts)
        if block is None:  # not this layout: one reduce per rank's block
            start = 0
            for r, n in enumerate(counts):
                if n:
                    self.comm.reduce(_ptr(send[start:start + n]),
                                     _ptr(recv) if r == self.rank else _ptr(send[start:]), n,
                                     _dtype(send), _SUM, r, _stream())
                start += n
            return
        size = self.size
        if block:
            self.comm.reduceScatter(_ptr(send), _ptr(recv), block, _dtype(send), _SUM,
                                    _stream())
        tail = counts[-1] - block
        if tail:
            source = send[size * block:]
            target = recv[block:] if self.rank == size - 1 else source
            self.comm.reduce(_ptr(source), _ptr(target), tail, _dtype(send), _SUM, size - 1,
                             _stream())

    def all_gather(self, buffer, counts) -> None:
        block = block_of(counts)
        if block is None:
            start = 0
            for r, n in enumerate(counts):
                if n:
                    part = buffer[start:start + n]
                    self.comm.broadcast(_ptr(part), _ptr(part), n, _dtype(buffer), r,
                                        _stream())
                start += n
            return
        size = self.size
        if block:
            mine = buffer[self.rank * block:(self.rank + 1) * block]
            self.comm.allGather(_ptr(mine), _ptr(buffer), block, _dtype(buffer), _stream())
        tail = counts[-1] - block
        if tail:
            rest = buffer[size * block:]
            self.comm.broadcast(_ptr(rest), _ptr(rest), tail, _dtype(buffer), size - 1,
                                _stream())

    def gather(self, send, recv, counts, root: int = 0) -> None:
        host_recv = None if recv is None else np.empty(recv.shape, recv.dtype)
        self.host.gather(send.get(), host_recv, counts, root)
        if recv is not None and self.rank == root:
            recv.set(host_recv)

    def broadcast(self, array, root: int = 0) -> None:
        if isinstance(array, np.ndarray):  # a host flag (checkpoints): over MPI
            self.host.broadcast(array, root)
            return
        self.comm.broadcast(_ptr(array), _ptr(array), array.size, _dtype(array), root,
                            _stream())

    def barrier(self) -> None:
        import cupy

        cupy.cuda.get_current_stream().synchronize()
        self.host.barrier()
