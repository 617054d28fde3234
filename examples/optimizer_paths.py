"""Gradient descent, Momentum, RMSprop and Adam on elongated quadratic contours.

The cost J(w, b) = 0.5 * (w^2 / 25 + 4 b^2) is 100 times steeper along b than
along w: plain gradient descent zig-zags across the valley, Momentum averages
the zig-zag away, RMSprop and Adam divide each direction by the root of its
squared-gradient average so both move at a similar pace. Every step is one
call of a fused kernel on a 2-element parameter.

    python examples/optimizer_paths.py [--out DIR] [--steps N]
"""

from __future__ import annotations

import numpy as np
from _common import save, start

import fusedopt as fo

CURVATURE = np.array([1 / 25, 4.0])  # d2J/dw2, d2J/db2
START = np.array([-9.0, 1.5])


def gradient(theta: np.ndarray) -> np.ndarray:
    return CURVATURE * theta


def path(rule: str, steps: int) -> np.ndarray:
    theta = START.copy()
    state = [np.zeros(2), np.zeros(2)]
    points = [theta.copy()]
    for t in range(1, steps + 1):
        g = gradient(theta)
        if rule == "gradient descent":
            fo.sgd_(theta, g, lr=0.45)
        elif rule == "momentum":
            fo.momentum_(theta, g, state[0], lr=0.45, beta=0.9)
        elif rule == "rmsprop":
            fo.rmsprop_(theta, g, state[0], lr=0.15, beta=0.9)
        else:
            fo.adam_(theta, g, state[0], state[1], step=t, lr=0.3)
        points.append(theta.copy())
    return np.array(points)


def main(argv=None) -> str:
    args, plt = start(__doc__, argv, ("--steps", dict(type=int, default=40)))
    w, b = np.meshgrid(np.linspace(-10, 2, 300), np.linspace(-2, 2, 200))
    cost = 0.5 * (CURVATURE[0] * w**2 + CURVATURE[1] * b**2)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.contour(w, b, cost, levels=np.geomspace(0.005, 8, 14), colors="lightgray",
               linewidths=0.8)
    for rule, color in (("gradient descent", "tab:blue"), ("momentum", "tab:red"),
                        ("rmsprop", "tab:green"), ("adam", "tab:purple")):
        points = path(rule, args.steps)
        final = 0.5 * float(CURVATURE @ points[-1] ** 2)
        ax.plot(points[:, 0], points[:, 1], "o-", ms=2.5, lw=1, color=color,
                label=f"{rule} (J = {final:.2g} after {args.steps} steps)")
    ax.plot(0, 0, "k*", ms=10)
    ax.set_xlabel("w (shallow direction)")
    ax.set_ylabel("b (steep direction)")
    ax.set_title("Paths on an elongated quadratic, from the same start")
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, plt, args.out, "optimizer_paths.png")


if __name__ == "__main__":
    main()
