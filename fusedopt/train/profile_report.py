"""The profiler's results: one :class:`Probe` per batch size, the :class:`Profile` with its
table, JSON and plots, and the lecture's smoothed cost curve."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from fusedopt.train import planner


@dataclass
class Probe:
    """What one batch size did."""

    batch_size: int
    status: str  # "ok", "out of memory", "predicted not to fit"
    seconds: float = 0.0
    steps: int = 0
    samples_per_s: float = 0.0
    epoch_seconds: float = 0.0
    cost_start: float = math.nan
    cost_end: float = math.nan
    cost_reduction_per_s: float = 0.0
    time_to_target: float | None = None  # seconds until the cost reached the target
    planned_peak_bytes: int | None = None
    error: str = ""
    curve: list[tuple[float, float]] = field(default_factory=list)  # (seconds, batch cost)
    eval_curve: list[tuple[float, float]] = field(default_factory=list)  # (s, training cost)


@dataclass
class Profile:
    """The sweep's results, the recommendation and how it compares with the plan."""

    probes: list[Probe]
    recommended: int | None
    plan: planner.BatchPlan | None
    comparison: str
    noise_scale: dict | None
    m: int
    target_fraction: float = 0.05

    def table(self) -> str:
        lines = [f"{'batch':>7} {'status':<22}{'samples/s':>11}{'s/epoch':>10}{'steps':>7}"
                 f"{'cost start':>11}{'cost end':>10}{'to target':>11}{'cost drop/s':>12}"]
        for p in self.probes:
            if p.status == "ok":
                reached = (f"{p.time_to_target:.3f} s" if p.time_to_target is not None
                           else "not reached")
                lines.append(f"{p.batch_size:>7} {p.status:<22}{p.samples_per_s:>11.0f}"
                             f"{p.epoch_seconds:>10.4f}{p.steps:>7}{p.cost_start:>11.4f}"
                             f"{p.cost_end:>10.4f}{reached:>11}{speed(p):>12.3f}")
            else:
                lines.append(f"{p.batch_size:>7} {p.status:<22}  {p.error}")
        if self.recommended is not None:
            lines.append(f"recommended: {self.recommended} (the training cost reached the target "
                         "soonest)")
        lines.append(self.comparison)
        if self.noise_scale:
            lines.append(self.noise_scale["meaning"])
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"m": self.m, "recommended": self.recommended, "comparison": self.comparison,
                "target_fraction": self.target_fraction,
                "noise_scale": self.noise_scale,
                "plan": None if self.plan is None else {
                    k: v for k, v in asdict(self.plan).items() if k != "candidates"},
                "probes": [asdict(p) for p in self.probes]}

    def plot(self, out_dir: str) -> list[str]:
        """Throughput and cost-against-time curves as PNG files in ``out_dir``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(out_dir, exist_ok=True)
        ok = [p for p in self.probes if p.status == "ok"]
        ok.sort(key=lambda p: p.batch_size)
        paths = []
        fig, left = plt.subplots(figsize=(7, 4.2))
        sizes = [p.batch_size for p in ok]
        left.plot(sizes, [p.samples_per_s for p in ok], "o-", color="tab:blue")
        left.set_xscale("log", base=2)
        left.set_xlabel("mini-batch size")
        left.set_ylabel("samples per second", color="tab:blue")
        right = left.twinx()
        right.plot(sizes, [p.cost_reduction_per_s for p in ok], "s--", color="tab:red")
        right.set_ylabel("cost reduction per second", color="tab:red")
        if self.recommended is not None:
            left.axvline(self.recommended, color="gray", lw=0.8)
        left.set_title("Throughput and progress by mini-batch size")
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "throughput.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for p in ok:
            if p.eval_curve:
                t, cost = zip(*p.eval_curve, strict=True)
                ax.plot(t, cost, marker=".", label=f"{p.batch_size}")
        target = [p.cost_start for p in ok][:1]
        if target:
            ax.axhline(target[0] * self.target_fraction, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("training seconds")
        ax.set_ylabel("cost on the training set")
        ax.set_yscale("log")
        ax.legend(title="batch size", fontsize=8)
        ax.set_title("Cost against time")
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "cost_vs_time.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
        return paths


def finite_json(value):
    """``value`` with NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def smoothed(values: Sequence[float], beta: float = 0.9) -> list[float]:
    """The lecture's exponentially weighted average with bias correction (fused ``ewa_``)."""
    from fusedopt.functional import debias, ewa_

    average, value = np.zeros(1), np.zeros(1)
    out = []
    for t, v in enumerate(values, start=1):
        value[0] = v
        ewa_(average, value, beta=beta)
        out.append(float(debias(average, beta=beta, step=t)[0]))
    return out


def speed(p: Probe) -> float:
    """Cost reduction per second up to the target (or the end of the budget)."""
    if p.time_to_target:
        return (p.cost_start - p.cost_end) / p.time_to_target
    return p.cost_reduction_per_s
