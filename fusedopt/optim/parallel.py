"""Data-parallel and ZeRO-1 steps: ``fo.Adam(arena, comm=comm, shard_state=True)``.

Each of W ranks computes the gradients of its part of the global batch into its own
``arena.grads``; ``opt.step()`` then makes the step of the averaged gradient, the same
on every rank.

* ``shard_state=False`` (data-parallel): the gradient buffers are summed across the
  ranks (one all-reduce per buffer dtype), and every rank makes the whole update,
  holding the whole state.
* ``shard_state=True`` (ZeRO stage 1): rank r holds the state (and the float32 master
  copy) of its r-th contiguous block of each flat buffer only, 1/W of it. A step is

  1. reduce-scatter of each gradient buffer: rank r receives the summed gradients of
     its block (16-bit gradients are summed in float32);
  2. the fused update of that block (one launch per buffer dtype, as for an arena),
     with the ``1/W`` of the average folded into the kernel's ``grad_scale``;
  3. all-gather of each parameter buffer, in place.

  This moves the bytes of one all-reduce and holds 1/W of the state. Blocks are cut
  from the flat buffers whatever the tensors: a tensor may straddle two ranks.

Clipping (``max_grad_norm``) and the non-finite check take the global norm: each
rank's sums of squares of its block are all-reduced in one collective of three
numbers (a NaN or inf anywhere makes the sum non-finite, so the non-finite flag rides
along). Stochastic rounding numbers each element by its place in the whole arena, so
its bits do not depend on the number of ranks.

Checkpoints (``fo.save``/``fo.load``) are collective and hold the whole state in the
layout of an unsharded optimizer over the same arena: a file saved on W ranks loads
on any number of ranks, including one process with no MPI at all.

The communicator is anything with the methods of :class:`Solo` (the world of one
process, used when ``comm`` is None); :func:`fusedopt.distributed.init` gives one over
MPI (NumPy arrays; CuPy arrays staged through the host) or NCCL (CuPy arrays).
"""

from __future__ import annotations

import numpy as np

from fusedopt import _checks
from fusedopt.arena import ParamArena
from fusedopt.kernels.dtypes import LOW_PRECISION, storage_name
from fusedopt.optim.groups import bits

_METHODS = ("rank", "size", "all_reduce", "reduce_scatter", "all_gather", "gather",
            "broadcast", "barrier")


class Solo:
    """The world of one process: every collective is the identity (or a copy)."""

    rank = 0
    size = 1

    def all_reduce(self, array) -> None:
        """Sum ``array`` across the ranks, in place."""

    def reduce_scatter(self, send, recv, counts) -> None:
        """Sum ``send`` across the ranks; rank r receives block r (``counts[r]`` items)."""
        recv[...] = send[: counts[0]]

    def all_gather(self, buffer, counts) -> None:
        """In place: block r of ``buffer`` (``counts[r]`` items) from rank r, to every rank."""

    def gather(self, send, recv, counts, root: int = 0) -> None:
        """Block r of ``recv`` (on ``root`` only) from rank r's ``send``."""
        recv[...] = send

    def broadcast(self, array, root: int = 0) -> None:
        """``root``'s ``array`` to every rank, in place."""

    def barrier(self) -> None:
        """Wait for every rank."""


SOLO = Solo()


def blocks(n: int, size: int) -> tuple[list[int], list[int]]:
    """``(counts, displacements)``: ``n`` items cut into ``size`` contiguous blocks of
    ``n // size``, the last rank's also holding the ``n % size`` left over (fewer than
    ``size`` items): equal blocks go through the fast collectives, with no padding."""
    counts = [n // size] * (size - 1) + [n // size + n % size]
    displs = [sum(counts[:r]) for r in range(size)]
    return counts, displs


def block_of(counts) -> int | None:
    """The equal block size of a :func:`blocks` layout (every rank but the last has the
    same count, the last at least as many), else None: what the fast equal-block
    collectives (MPI's ``Reduce_scatter_block``/``Allgather``, NCCL's) take, the last
    rank's tail going separately."""
    first = counts[0]
    if all(c == first for c in counts[:-1]) and counts[-1] >= first:
        return first
    return None


class _Shard:
    """One buffer dtype's block on this rank."""

    def __init__(self, xp, dtype, param, grad, rank: int, size: int):
        self.storage = storage_name(dtype)
        self.param, self.grad = param, grad
        self.counts, self.displs = blocks(param.size, size)
        self.lo = self.displs[rank]
        self.hi = self.lo + self.counts[rank]
        wide = self.storage in LOW_PRECISION  # 16-bit gradients are summed in float32
        self.sum_dtype = np.dtype(np.float32) if wide else param.dtype
        # one process: the gradient buffer is its own sum (no copy, no collective)
        self.alone = size == 1 and not wide
        self.grad_sum = (grad[self.lo:self.hi] if self.alone
                         else xp.empty(self.hi - self.lo, self.sum_dtype))
        self.grad_wide = xp.empty(param.size, np.float32) if wide else None


class ParallelOptimizer:
    """What ``fo.<Optimizer>(params, comm=..., shard_state=...)`` returns (see the module
    docstring); ``inner`` is the optimizer that makes the local update."""

    collective = True

    def __init__(self, cls, params, *, comm=None, shard_state: bool = False, **kwargs):
        name = cls.__name__
        comm = SOLO if comm is None else comm
        missing = [m for m in _METHODS if not hasattr(comm, m)]
        if missing:
            raise TypeError(f"{name}: comm={type(comm).__name__} lacks {missing}; pass "
                            "fusedopt.distributed.init() (MPI or NCCL), or None for one process")
        self.comm, self.optimizer_class, self._kwargs = comm, cls, dict(kwargs)
        self.shard_state = _checks.flag(name, "shard_state", shard_state)
        self.arena = params if isinstance(params, ParamArena) else None
        self._full = None  # an unsharded optimizer over the arena, for checkpoints
        self._wide: dict = {}  # data-parallel: float32 copies of 16-bit gradient buffers
        if not self.shard_state:
            self.inner = cls(params, **kwargs)
            return
        if kwargs.get("capturable"):
            raise ValueError(f"{name}: capturable=True with shard_state=True is not supported "
                             "(the global norm of the shards is summed on the host); use "
                             "shard_state=False or capturable=False")
        if self.arena is None:
            raise TypeError(f"{name}: shard_state=True shards the flat buffers of a "
                            f"ParamArena; pass one (a list of arrays takes shard_state=False)")
        xp = np if self.arena.kind == "numpy" else __import__("cupy")
        self._shards, firsts, first = [], [], 0
        for dtype, (param, grad) in self.arena.buffers.items():
            shard = _Shard(xp, dtype, param, grad, comm.rank, comm.size)
            self._shards.append(shard)
            firsts.append(first + shard.lo)
            first += param.size
        self.inner = cls([s.param[s.lo:s.hi] for s in self._shards], **kwargs)
        self.inner._firsts = firsts  # stochastic rounding numbers elements in the arena
        self.inner._reduce_totals = self._all_reduce_totals

    # ---------------------------------------------------------------- the step
    def step(self, grads=None, *, grad_scale: float = 1.0) -> bool | None:
        """One update from every rank's gradients (their average); returns False when a
        non-finite step was skipped (on every rank alike)."""
        name = type(self.inner).__name__
        grad_scale = _checks.real(name, "grad_scale", grad_scale, 0.0, lo_open=True)
        world = self.comm.size
        if not self.shard_state:
            self._sum_gradients(grads)
            return self.inner.step(grads, grad_scale=grad_scale / world)
        if grads is not None:
            raise TypeError(f"{name}.step(grads): a sharded optimizer reads arena.grads; "
                            "write each rank's gradients there and call step()")
        for shard in self._shards:
            if shard.alone:
                continue
            source = shard.grad
            if shard.grad_wide is not None:
                shard.grad_wide[...] = source
                source = shard.grad_wide
            self.comm.reduce_scatter(source, shard.grad_sum, shard.counts)
        applied = self.inner.step([s.grad_sum for s in self._shards],
                                  grad_scale=grad_scale / world)
        if applied:
            for shard in self._shards:
                self.comm.all_gather(bits(shard.param, shard.storage), shard.counts)
        return applied

    def _sum_gradients(self, grads) -> None:
        """Data-parallel: every gradient summed across the ranks, in place."""
        if self.comm.size == 1:
            return
        if grads is None:
            if self.arena is None:
                return  # the inner step names the missing gradients
            for dtype, (_, grad) in self.arena.buffers.items():
                if storage_name(dtype) in LOW_PRECISION:  # summed in float32, then rounded
                    wide = self._wide.get(dtype)
                    if wide is None:  # kept: a new one each step faults its pages in
                        wide = self._wide[dtype] = grad.astype(np.float32)
                    else:
                        wide[...] = grad
                    self.comm.all_reduce(wide)
                    grad[...] = wide
                else:
                    self.comm.all_reduce(grad)
            return
        for k, g in enumerate(grads):
            if not hasattr(g, "dtype") or storage_name(g.dtype) not in ("float32", "float64"):
                raise TypeError(f"{type(self.inner).__name__}.step: grads[{k}] must be a "
                                "float32 or float64 array to be summed across ranks")
            self.comm.all_reduce(g)

    def _all_reduce_totals(self, totals: list[float]) -> list[float]:
        """The norm accumulators of every rank's block, summed: one collective."""
        values = np.array(totals, dtype=np.float64)
        self.comm.all_reduce(values)
        return [float(x) for x in values]

    # ------------------------------------------------------------- checkpoints
    def _full_optimizer(self):
        """An unsharded optimizer over the same arena (state allocated on demand):
        checkpoints go through it, so a file has one layout whatever the world size."""
        if self._full is None:
            self._full = self.optimizer_class(self.arena, **self._kwargs)
        return self._full

    def state_dict(self) -> dict | None:
        """The whole state, in the layout of an unsharded optimizer; collective: every
        rank must call it. Rank 0 gets the dict, the others None (sharded) or the same
        dict (data-parallel, whose ranks hold the same state)."""
        if not self.shard_state:
            return self.inner.state_dict()
        full = self._full_optimizer()
        root = self.comm.rank == 0
        group, inner = full.groups[0], self.inner.groups[0]
        if root and inner.state is not None:
            group.allocate(full._xp, full.state_dtype, full.master_weights)
        try:
            for u, shard in enumerate(self._shards):
                for k in range(len(inner.state_names) if inner.state is not None else 0):
                    send = inner.state[u][k]
                    self.comm.gather(send, group.state[u][k] if root else None,
                                     shard.counts)
                if inner.master is not None and inner.master[u] is not None:
                    self.comm.gather(inner.master[u], group.master[u] if root else None,
                                     shard.counts)
            if not root:
                return None
            full.step_count, full.epoch = self.inner.step_count, self.inner.epoch
            full.skipped_steps = self.inner.skipped_steps
            return full.state_dict()
        finally:
            group.state = group.master = None  # the whole state is held only while saving

    def load_state_dict(self, state: dict) -> None:
        """Load a checkpoint of any world size (every rank reads the same dict)."""
        if not self.shard_state:
            self.inner.load_state_dict(state)
            return
        full = self._full_optimizer()
        full.load_state_dict(state)  # every check, then the arena's parameters
        group, inner = full.groups[0], self.inner.groups[0]
        try:
            if group.state is None:
                inner.state = inner.master = None
            else:
                if inner.state is None:
                    inner.allocate(self.inner._xp, self.inner.state_dtype,
                                   self.inner.master_weights)
                for u, shard in enumerate(self._shards):
                    for k, array in enumerate(group.state[u]):
                        inner.state[u][k][...] = array[shard.lo:shard.hi]
                    if group.master is not None and group.master[u] is not None:
                        inner.master[u][...] = group.master[u][shard.lo:shard.hi]
            self.inner.step_count, self.inner.epoch = full.step_count, full.epoch
            self.inner.skipped_steps = full.skipped_steps
            self.inner.seed = full.seed
        finally:
            group.state = group.master = None

    def save(self, path) -> None:
        """:func:`fusedopt.save`, collectively: rank 0 writes, every rank learns whether it
        worked (so no rank waits forever on a failed one)."""
        from fusedopt.optim import checkpoint

        state = self.state_dict()
        failure = ""
        if self.comm.rank == 0:
            try:
                checkpoint.write(path, state)
            except Exception as exc:  # told to every rank below, then raised everywhere
                failure = f"{type(exc).__name__}: {exc}"
        flag = np.array([len(failure)], dtype=np.int64)
        self.comm.broadcast(flag)
        if flag[0]:
            raise OSError(f"save: rank 0 could not write {path}: {failure or 'see rank 0'}")

    # --------------------------------------------------------- the rest: inner's
    _OWN = frozenset({"comm", "optimizer_class", "_kwargs", "shard_state", "arena", "_full",
                      "_wide", "_shards", "inner"})

    def __getattr__(self, name: str):
        if name == "inner":  # not yet set (during __init__)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value) -> None:
        """The optimizer's own settings (``opt.lr = ...``, ``opt.max_grad_norm``) are the
        inner optimizer's: set there, or a step would not see them."""
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    def __repr__(self) -> str:
        mode = "ZeRO-1" if self.shard_state else "data-parallel"
        return (f"{type(self.inner).__name__}({mode}, rank {self.comm.rank} of "
                f"{self.comm.size})")
