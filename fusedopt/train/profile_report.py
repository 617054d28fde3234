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
    # (seconds, cost) rows: every step's mini-batch cost, and the training-set cost at each
    # evaluation (NumPy arrays of at most config.PROFILER_CURVE_POINTS rows; lists in JSON)
    curve: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))
    eval_curve: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))
    repeats: int = 1
    times_to_target: list[float | None] = field(default_factory=list)  # one per repeat
    spread: float | None = None  # max - min of the repeats' times to the target
    steps_to_target: int | None = None  # the same in every repeat: the seeds are fixed
    step_seconds: float = 0.0  # the fitted a + k * b (see step_time_model)
    m_over_b: int = 0  # steps per epoch


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
        lines = [f"{'batch':>7} {'status':<14}{'samples/s':>11}{'s/epoch':>10}{'steps':>7}"
                 f"{'cost start':>11}{'cost end':>10}{'to target (spread)':>22}"
                 f"{'cost drop/s':>12}"]
        for p in self.probes:
            if p.status == "ok":
                reached = (f"{p.time_to_target * 1e3:.2f} ms (+-{(p.spread or 0) * 5e2:.2f})"
                           if p.time_to_target is not None else "not reached")
                lines.append(f"{p.batch_size:>7} {p.status:<14}{p.samples_per_s:>11.0f}"
                             f"{p.epoch_seconds:>10.4f}{p.steps:>7}{p.cost_start:>11.4f}"
                             f"{p.cost_end:>10.4f}{reached:>22}{speed(p):>12.3f}")
            else:
                lines.append(f"{p.batch_size:>7} {p.status:<22}  {p.error}")
        if self.recommended is not None:
            lines.append(f"recommended: {self.recommended}")
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
                "probes": [{**asdict(p), "curve": np.asarray(p.curve).tolist(),
                            "eval_curve": np.asarray(p.eval_curve).tolist()}
                           for p in self.probes]}

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
            if len(p.eval_curve):
                ax.plot(p.eval_curve[:, 0], p.eval_curve[:, 1], marker=".",
                        label=f"{p.batch_size}")
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


def step_time_model(rounds: dict[int, list[float]]) -> tuple[float, float]:
    """``(a, k)`` of ``step seconds = a + k * b``, fitted to every size's fastest round.

    A step costs a fixed part (the optimizer's pass, Python) and a part per sample
    (the matrix products). Fitting one line to all sizes pools their measurements, so
    one size's bad luck with a noisy machine cannot move its time alone. Least squares
    on relative errors; both parts kept non-negative.
    """
    points = [(b, min(times)) for b, times in rounds.items() if times]
    if len(points) < 2:
        return (points[0][1], 0.0) if points else (0.0, 0.0)
    b = np.array([p[0] for p in points], float)
    t = np.array([p[1] for p in points], float)
    design = np.stack([np.ones_like(b), b], axis=1) / t[:, None]
    (a, k), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if a < 0 or k < 0:  # one part alone explains it better
        a, k = (0.0, float(np.median(t / b))) if a < 0 else (float(np.median(t)), 0.0)
    return float(a), float(k)


def combine(probe: Probe, step_seconds: list[float], model: tuple[float, float]) -> Probe:
    """A size's training run with its timing rounds: the time to the target is the steps it
    took (the same in any run: the seeds are fixed) times the step time the fitted model
    ``a + k * b`` gives (:func:`step_time_model`); the spread is what this size's own
    fastest and slowest rounds would give."""
    import dataclasses

    if probe.status != "ok" or not step_seconds:
        return probe
    step = model[0] + model[1] * probe.batch_size
    steps = probe.steps_to_target
    times = [None if steps is None else steps * t for t in step_seconds]
    return dataclasses.replace(
        probe, step_seconds=step, repeats=len(step_seconds), times_to_target=times,
        time_to_target=None if steps is None else steps * step,
        spread=None if steps is None else steps * (max(step_seconds) - min(step_seconds)),
        samples_per_s=probe.batch_size / step, epoch_seconds=probe.m_over_b * step
        if probe.m_over_b else probe.epoch_seconds)


def recommend(probes: list[Probe], tie_fraction: float | None = None,
              drift_fraction: float | None = None,
              step_saving: float | None = None) -> tuple[int | None, str]:
    """The recommended batch size, and the rule that chose it, in words.

    With ``T_b`` a size's time to the target cost and ``T*`` the fastest, sizes tie when

    * ``T_b <= (1 + tie_fraction) T*`` (the resolution of one run,
      ``config.PROFILER_TIE_FRACTION``), or
    * ``T_b <= (1 + drift_fraction) T*`` (how far the machine drifts between runs,
      ``config.PROFILER_DRIFT_FRACTION``) and ``steps_b <= (1 - step_saving) steps_a``,
      ``a`` the largest smaller tied size: a markedly shorter run, which the seeds fix,
      for a time within the drift;

    and the largest of the tied wins: more samples per second, fewer steps, and as fast
    to the target as can be told. Without any size reaching the target, the fastest cost
    reduction per second wins.
    """
    from fusedopt import config

    tie_fraction = config.PROFILER_TIE_FRACTION if tie_fraction is None else tie_fraction
    drift_fraction = (config.PROFILER_DRIFT_FRACTION if drift_fraction is None
                      else drift_fraction)
    step_saving = config.PROFILER_STEP_SAVING if step_saving is None else step_saving
    ok = [p for p in probes if p.status == "ok"]
    if not ok:
        return None, "no batch size could be measured"
    reached = [p for p in ok if p.time_to_target is not None]
    if not reached:
        best = max(ok, key=speed)
        return best.batch_size, (f"no size reached the target cost; {best.batch_size} lowered "
                                 "the cost fastest per second")
    best = min(reached, key=lambda p: p.time_to_target)
    tied: list[Probe] = []
    saved: list[Probe] = []  # tied by their shorter runs, within the drift
    for p in sorted(reached, key=lambda p: p.batch_size):
        slower = p.time_to_target / best.time_to_target - 1.0
        if slower <= tie_fraction:
            tied.append(p)
        elif (slower <= drift_fraction and tied and p.steps_to_target is not None
              and tied[-1].steps_to_target is not None
              and p.steps_to_target <= (1.0 - step_saving) * tied[-1].steps_to_target):
            tied.append(p)
            saved.append(p)
    choice = tied[-1]
    sizes = ", ".join(str(p.batch_size) for p in tied)
    if len(tied) == 1:
        return choice.batch_size, (f"{choice.batch_size} reached the target cost soonest, "
                                   "beyond the noise of the others")
    why = ""
    if saved:
        why = (" (" + ", ".join(str(p.batch_size) for p in saved)
               + f" within the drift between runs, {drift_fraction:.0%}, with at least "
               f"{step_saving:.0%} fewer steps)")
    return choice.batch_size, (f"{sizes} reached the target cost within noise of the fastest "
                               f"({best.batch_size}, {best.time_to_target * 1e3:.2f} ms){why}; "
                               f"the largest of them, {choice.batch_size}, wins the tie (more "
                               "throughput, fewer steps)")
