"""``fusedopt bench --distributed``: data-parallel and ZeRO-1 steps under ``mpiexec``.

Run as ``mpiexec -n W fusedopt bench --distributed`` (or ``python -m mpi4py -m fusedopt
...``). On the 157-tensor set of ``fusedopt bench --model`` (10.76M float32 parameters,
Adam), every rank times, in interleaved rounds with a barrier before each step:

* ``single``: the plain step of one process (rank 0 alone, the others waiting);
* ``data-parallel``: all-reduce of the gradients, then the whole update on every rank;
* ``ZeRO-1``: reduce-scatter, the update of 1/W, all-gather of the parameters.

and reports the median step, the bytes each rank sends per step by the usual ring
algorithms (all-reduce ``2 (W-1)/W n``, reduce-scatter and all-gather ``(W-1)/W n``
items each), and the optimizer state (and summed-gradient block) each rank holds.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from fusedopt import bench, config
from fusedopt.arena import ParamArena
from fusedopt.optim import Adam


def _steps(comm, shapes, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    steps, holders = {}, {}
    for mode in ("single", "data-parallel", "ZeRO-1"):
        arena = ParamArena(params)
        for view in arena.grads:
            view[...] = rng.standard_normal(view.shape)
        if mode == "single":
            opt = Adam(arena, lr=1e-3)
            if comm.rank != 0:
                steps[mode] = lambda: None
                continue
        else:
            opt = Adam(arena, lr=1e-3, comm=comm, shard_state=mode == "ZeRO-1")
        steps[mode] = opt.step
        holders[mode] = opt
    return steps, holders


def _held(opt) -> int:
    inner = getattr(opt, "inner", opt)
    held = sum(a.nbytes for group in inner.groups for unit in group.state or () for a in unit)
    return held + sum(s.grad_sum.nbytes for s in getattr(opt, "_shards", ()) if not s.alone)


def measure(comm, *, shapes=None, min_repeats: int | None = None) -> list[dict]:
    """Each mode's median step on this rank (rank 0's rows are the report)."""
    shapes = bench.transformer_like_shapes() if shapes is None else shapes
    repeats = min_repeats or config.BENCH_MIN_REPEATS
    steps, holders = _steps(comm, shapes)
    times: dict[str, list[float]] = {mode: [] for mode in steps}
    for step in steps.values():  # warm: compile, allocate the state
        comm.barrier()
        step()
    for _ in range(repeats):
        for mode, step in steps.items():
            comm.barrier()
            start = time.perf_counter()
            step()
            times[mode].append(time.perf_counter() - start)
    n = sum(int(np.prod(s)) for s in shapes)
    world = comm.size
    sent = {"single": 0, "data-parallel": 2 * (world - 1) / world * n * 4,
            "ZeRO-1": 2 * (world - 1) / world * n * 4}
    single = statistics.median(times["single"])
    rows = []
    for mode in steps:
        median = statistics.median(times[mode])
        rows.append({"mode": mode, "ranks": 1 if mode == "single" else world,
                     "median_ms": 1e3 * median, "x_single": median / single if single else None,
                     "sent_mb": sent[mode] / 1e6,
                     "held_mb": _held(holders[mode]) / 1e6 if mode in holders else None,
                     "parameters": n})
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'mode':<14}{'ranks':>6}{'step':>11}{'x single':>10}{'sent/rank':>12}"
            f"{'state/rank':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        held = f"{r['held_mb']:.1f} MB" if r["held_mb"] is not None else "-"
        lines.append(f"{r['mode']:<14}{r['ranks']:>6}{r['median_ms']:>8.2f} ms"
                     f"{r['x_single']:>9.2f}x{r['sent_mb']:>9.1f} MB{held:>12}")
    return "\n".join(lines)
