"""Learning-rate decay: the lecture's schedules, and what they do to training.

Left: alpha over the epochs for 1/(1 + decay_rate * epoch), 0.95^epoch,
k/sqrt(epoch) and a staircase. Right: mini-batch SGD (fused ``fo.SGD``) on a
noisy least-squares problem, where the optimum is known exactly. With a
constant rate the noisy mini-batch steps keep the weights wandering around the
minimum (the lecture's blue path); as the rate decays the steps shrink and the
cost settles much closer to the optimum (the green path).

    python examples/lr_decay.py [--out DIR] [--epochs N]
"""

from __future__ import annotations

import numpy as np
from _common import save, start

import fusedopt as fo

LR0 = 0.05


def schedules_to_compare() -> dict:
    return {"constant": fo.schedules.constant(LR0),
            "1/(1 + 0.2 epoch)": fo.schedules.inverse_time(LR0, decay_rate=0.2),
            "0.95^epoch": fo.schedules.exponential(LR0, base=0.95),
            "1/sqrt(epoch)": fo.schedules.inverse_sqrt(LR0, k=1.0),
            "staircase (x0.5 every 10)": fo.schedules.staircase(LR0, factor=0.5, every=10)}


def problem(n_x: int = 20, m: int = 2000, noise: float = 1.0, seed: int = 0):
    """X: (n_x, m), y = w_true . x + noise, and the exact least-squares optimum."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_x, m))
    y = rng.standard_normal(n_x) @ X + noise * rng.standard_normal(m)
    w_star = np.linalg.lstsq(X.T, y, rcond=None)[0]
    return X, y[None, :], w_star


def cost(w, X, Y) -> float:
    residual = w @ X - Y[0]
    return 0.5 * float(residual @ residual) / X.shape[1]


def train(X, Y, schedule, epochs: int, batch_size: int = 8) -> list[float]:
    w = np.zeros(X.shape[0])
    opt = fo.SGD([w], lr=LR0, schedule=schedule)
    costs = []
    for _ in range(epochs):
        for X_t, Y_t in fo.minibatches(X, Y, batch_size, seed=1):
            grad = X_t @ (w @ X_t - Y_t[0]) / X_t.shape[1]
            opt.step([grad])
        opt.next_epoch()
        costs.append(cost(w, X, Y))
    return costs


def main(argv=None) -> str:
    args, plt = start(__doc__, argv, ("--epochs", dict(type=int, default=40)))
    X, Y, w_star = problem()
    best = cost(w_star, X, Y)
    epochs = np.arange(1, args.epochs + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, schedule in schedules_to_compare().items():
        left.plot(epochs, [schedule(int(e)) for e in epochs], label=name)
        excess = np.array(train(X, Y, schedule, args.epochs)) - best
        right.plot(epochs, excess, label=f"{name}: {excess[-1]:.1e}")
    left.set_xlabel("epoch")
    left.set_ylabel("learning rate alpha")
    left.set_title(f"Decay schedules (alpha0 = {LR0})")
    left.legend(fontsize=8)
    right.set_xlabel("epoch")
    right.set_ylabel("J(w) - J(w*)")
    right.set_yscale("log")
    right.set_title("Mini-batch SGD (8) on noisy least squares")
    right.legend(fontsize=8)
    return save(fig, plt, args.out, "lr_decay.png")


if __name__ == "__main__":
    main()
