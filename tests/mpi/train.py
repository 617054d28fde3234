"""Run by tests/test_distributed.py under ``mpiexec -n W python -m mpi4py``.

Every rank trains the same small arena for a few steps on its own gradients (rank r's
gradients of step t are seeded by (t, r), so the test can rebuild them), optionally
resuming from a checkpoint, optionally saving one; rank 0 writes the final parameters.

    train.py OUT_DIR MODE STEPS [--resume FILE] [--save FILE --save-at T] [--precision P]
"""

from __future__ import annotations

import argparse

import numpy as np

import fusedopt as fo
from fusedopt import distributed

SHAPES = [(5, 3), (7,), (4, 4), (3,)]  # 41 elements: a tail on the last rank for W = 2 and 3


def initial(dtype):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32).astype(dtype) for s in SHAPES]


def gradients(step: int, rank: int, dtype, same: bool):
    rng = np.random.default_rng(1000 * step + (0 if same else rank))
    return [rng.standard_normal(s).astype(np.float32).astype(dtype) for s in SHAPES]


def options(precision: str) -> tuple[object, dict]:
    if precision == "fp32":
        return np.float32, {}
    import ml_dtypes

    return ml_dtypes.bfloat16, dict(master_weights=True, stochastic_rounding=True, seed=7,
                                    state_dtype="bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("mode", choices=["dp", "zero"])
    parser.add_argument("steps", type=int)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--resume")
    parser.add_argument("--save")
    parser.add_argument("--save-at", type=int, default=0)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--every-optimizer", action="store_true")
    args = parser.parse_args()
    comm = distributed.init()
    if comm.rank == args.fail_rank:
        raise RuntimeError(f"rank {comm.rank} fails on purpose")
    if args.every_optimizer:
        every_optimizer(args, comm)
        return
    dtype, extra = options(args.precision)
    arena = fo.ParamArena(initial(dtype))
    opt = fo.Adam(arena, lr=0.01, max_grad_norm=2.0, comm=comm,
                  shard_state=args.mode == "zero", **extra)
    if args.resume:
        fo.load(args.resume, opt)
    same = args.precision != "fp32"  # 16-bit: every rank the same gradients (exact mean)
    for step in range(args.first, args.first + args.steps):
        for view, g in zip(arena.grads, gradients(step, comm.rank, dtype, same), strict=True):
            view[...] = g
        opt.step()
        if step == args.save_at:
            fo.save(args.save, opt)
    if comm.rank == 0:
        np.savez(f"{args.out}/params.npz", *[np.asarray(p).view(np.uint8) for p in arena.params])


def every_optimizer(args, comm) -> None:
    """Each registered optimizer (at its typical learning rate, with clipping) for
    ``args.steps`` steps; rank 0 saves every one's final parameters."""
    from fusedopt.kernels import optimizer_names

    results = {}
    for name in sorted(optimizer_names()):
        arena = fo.ParamArena(initial(np.float32))
        opt = fo.make_optimizer(name, arena, max_grad_norm=2.0, comm=comm,
                                shard_state=args.mode == "zero")
        for step in range(1, args.steps + 1):
            for view, g in zip(arena.grads, gradients(step, comm.rank, np.float32, False),
                               strict=True):
                view[...] = g
            opt.step()
        for k, p in enumerate(arena.params):
            results[f"{name}.{k}"] = np.asarray(p).copy()
    if comm.rank == 0:
        np.savez(f"{args.out}/every.npz", **results)


if __name__ == "__main__":
    main()
