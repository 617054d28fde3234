"""Batch, mini-batch and stochastic gradient descent on the digits: cost against
iterations and against seconds (the lecture's comparison).

Batch gradient descent (the whole training set per step) lowers the cost
smoothly, one expensive step per epoch; stochastic gradient descent (one
sample) takes many cheap, noisy steps that do not vectorise; mini-batches
(64) take many steps per epoch and still vectorise. Same MLP, same initial
weights, plain SGD with the same learning rate, all through the fused
kernels; the cost is measured on the whole training set.

    python examples/batch_vs_minibatch.py [--out DIR] [--seconds S]
"""

from __future__ import annotations

import time

import numpy as np
from _common import save, start

import fusedopt as fo
from fusedopt.train.datasets import load_digits
from fusedopt.train.profile import MLPTrainer


def run(X, Y, batch_size: int, seconds: float, lr: float = 0.1):
    """Train for ``seconds``; return (iterations, seconds, training-set cost) samples."""
    trainer = MLPTrainer([X.shape[0], 32, Y.shape[0]], optimizer="sgd", lr=lr, seed=0)
    curve = [(0, 0.0, trainer.cost(X, Y))]
    rng = np.random.default_rng(0)
    elapsed, step, next_eval = 0.0, 0, 0.0
    while elapsed < seconds:
        for X_t, Y_t in fo.minibatches(X, Y, batch_size, seed=rng):
            t0 = time.perf_counter()
            trainer.step(X_t, Y_t)
            elapsed += time.perf_counter() - t0
            step += 1
            if elapsed >= next_eval:
                curve.append((step, elapsed, trainer.cost(X, Y)))
                next_eval = elapsed + seconds / 60
            if elapsed >= seconds:
                break
    return np.array(curve)


def main(argv=None) -> str:
    args, plt = start(__doc__, argv, ("--seconds", dict(type=float, default=1.5)))
    data = load_digits()
    X, Y = data.X_train, data.Y_train
    run(X, Y, 8, 1e-3)  # warm up (JIT or cache load) outside the timed runs
    runs = {f"batch (m = {X.shape[1]})": X.shape[1], "mini-batch (64)": 64,
            "stochastic (1)": 1}
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(10, 4))
    for label, size in runs.items():
        curve = run(X, Y, size, args.seconds)
        by_step.plot(curve[:, 0], curve[:, 2], label=label)
        by_time.plot(curve[:, 1], curve[:, 2], label=label)
    by_step.set_xscale("symlog", linthresh=10)
    by_step.set_xlabel("iterations (gradient steps)")
    by_time.set_xlabel("training seconds")
    for ax in (by_step, by_time):
        ax.set_ylabel("cost on the training set")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle("Batch, mini-batch and stochastic gradient descent on the digits")
    return save(fig, plt, args.out, "batch_vs_minibatch.png")


if __name__ == "__main__":
    main()
