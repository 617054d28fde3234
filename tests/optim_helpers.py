"""Shared inputs of the optimizer tests: a small set of tensors, gradients, a train loop."""

from __future__ import annotations

import numpy as np

SHAPES = [(4, 3), (3,), (5, 2), (1,), (17,)]


def initial(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def gradients(steps, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def train(opt, arena, grads):
    """``opt.step`` over ``grads``, written into ``arena.grads`` first when there is one."""
    for g in grads:
        if arena is not None:
            for view, value in zip(arena.grads, g, strict=True):
                view[...] = value
            opt.step()
        else:
            opt.step(g)
