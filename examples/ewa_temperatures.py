"""Exponentially weighted averages of real daily temperatures (the lecture's figure).

Seattle's daily maximum temperature 2012-2015 (vega_datasets' local copy, no
download), averaged with ``fo.ewa_`` at beta = 0.9 (red, about 10 days), 0.98
(green, about 50 days: smoother, later) and 0.5 (yellow, about 2 days: noisy),
and beta = 0.98 without bias correction (purple: it starts far too low, since
V_0 = 0) against the same with ``fo.debias`` (green).

    python examples/ewa_temperatures.py [--out DIR] [--days N]
"""

from __future__ import annotations

import numpy as np
from _common import save, start

import fusedopt as fo


def seattle_temperatures(days: int | None = None) -> np.ndarray:
    from vega_datasets import local_data

    temps = local_data.seattle_weather()["temp_max"].to_numpy(dtype=np.float64)
    return temps if days is None else temps[:days]


def averages(temps: np.ndarray, beta: float, bias_correction: bool) -> np.ndarray:
    """V_t = beta V_{t-1} + (1 - beta) theta_t, with the fused kernel, day by day."""
    average, value = np.zeros(1), np.zeros(1)
    out = np.empty_like(temps)
    for t, theta in enumerate(temps, start=1):
        value[0] = theta
        fo.ewa_(average, value, beta=beta)
        out[t - 1] = fo.debias(average, beta=beta, step=t)[0] if bias_correction else average[0]
    return out


def main(argv=None) -> str:
    args, plt = start(__doc__, argv, ("--days", dict(type=int, default=None,
                                                      help="only the first N days")))
    temps = seattle_temperatures(args.days)
    days = np.arange(1, temps.size + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7))
    top.scatter(days, temps, s=3, color="tab:blue", alpha=0.5, label="daily maximum")
    for beta, color, width in ((0.5, "gold", 0.8), (0.9, "red", 1.4), (0.98, "green", 1.6)):
        top.plot(days, averages(temps, beta, True), color=color, lw=width,
                 label=f"beta = {beta} (~{1 / (1 - beta):.0f} days)")
    top.set_title("Seattle daily maximum temperature and its exponentially weighted averages")
    top.set_ylabel("deg C")
    top.legend(fontsize=8)
    span = min(temps.size, 120)
    bottom.scatter(days[:span], temps[:span], s=5, color="tab:blue", alpha=0.5)
    bottom.plot(days[:span], averages(temps, 0.98, True)[:span], color="green",
                label="beta = 0.98, bias-corrected: V_t / (1 - beta^t)")
    bottom.plot(days[:span], averages(temps, 0.98, False)[:span], color="purple",
                label="beta = 0.98, no bias correction (starts at V_0 = 0)")
    bottom.set_xlabel("day")
    bottom.set_ylabel("deg C")
    bottom.set_title("Bias correction matters early on")
    bottom.legend(fontsize=8)
    return save(fig, plt, args.out, "ewa_temperatures.png")


if __name__ == "__main__":
    main()
