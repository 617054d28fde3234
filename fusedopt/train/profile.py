"""Measure which mini-batch size trains fastest: real steps at each size, then a recommendation.

For each batch size the profiler trains a fresh copy of the same model (same
initial weights) for a fixed time budget with the lecture's mini-batch
gradient descent (a new shuffle each epoch), and records samples per second,
the time an epoch takes, and how fast the cost on the training set falls
(cost reduction per second): the lecture's advice, "try a few powers of two
and keep the one that lowers the cost fastest", measured. Sizes that run out
of memory (``MemoryError``, ``cupy.cuda.memory.OutOfMemoryError``) are
reported and the sweep continues with the smaller ones.

It also estimates the gradient noise scale ``B_simple = tr(Sigma) / |G|^2``
(McCandlish et al. 2018, "An Empirical Model of Large-Batch Training") from
gradients at two batch sizes, the batch size beyond which larger batches stop
buying fewer steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from numbers import Integral

import numpy as np

from fusedopt import _checks, config
from fusedopt.optim import make_optimizer, to_host
from fusedopt.train import planner
from fusedopt.train import precision as precisions
from fusedopt.train.batches import minibatches
from fusedopt.train.mlp import MLP
from fusedopt.train.profile_report import (
    Probe,
    Profile,
    combine,
    finite_json,
    recommend,
    speed,
    step_time_model,
)


class MLPTrainer:
    """The default model for profiling: :class:`fusedopt.MLP` with a fusedopt optimizer."""

    def __init__(self, layer_sizes: Sequence[int], *, optimizer: str = "adam",
                 lr: float | None = None, xp: str = "numpy", seed: int = 0, dtype=np.float32,
                 eval_chunk: int = 4096, precision: str = "fp32"):
        self.net = MLP(layer_sizes, xp=xp, seed=seed, dtype=dtype)
        self._trainer = precisions.Trainer(  # 16-bit recipes keep a 16-bit arena between steps
            self.net, precision, lambda params, **options: make_optimizer(
                optimizer, params, lr=lr, **options), seed=seed)
        self.opt = self._trainer.opt
        #: columns per forward pass of :meth:`cost`; the profiler sets it to the batch size
        #: it probes, so that evaluating never needs more memory than training.
        self.eval_chunk = eval_chunk

    def step(self, X_t, Y_t) -> float:
        """One training step; returns the mini-batch cost."""
        return self._trainer.train_step(X_t, Y_t)

    def cost(self, X, Y, chunk: int | None = None) -> float:
        """Mean cross-entropy over ``X, Y`` (in chunks of ``eval_chunk`` columns, no update)."""
        chunk = chunk or self.eval_chunk
        total, m = 0.0, X.shape[1]
        for start in range(0, m, chunk):
            self.net.forward(X[:, start:start + chunk])
            total += self.net.cost(Y[:, start:start + chunk]) * min(chunk, m - start)
        return total / m

    def gradient(self, X_t, Y_t) -> np.ndarray:
        """The mini-batch gradient (a float64 host copy), without an update."""
        self.net.loss_and_grad(X_t, Y_t)
        (_, grad), = self.net.arena.buffers.values()
        return to_host(grad).astype(np.float64)


def _oom_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (MemoryError,)
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        oom = getattr(getattr(getattr(cupy, "cuda", None), "memory", None),
                      "OutOfMemoryError", None)
        if isinstance(oom, type):
            errors += (oom,)
    return errors


def gradient_noise_scale(trainer, X, Y, *, small: int = 32, big: int = 512,
                         batches: int = 8, seed: int = 0) -> dict:
    """``B_simple = tr(Sigma) / |G|^2`` from gradients at two batch sizes (McCandlish et al.).

    With ``E|G_B|^2 = |G|^2 + tr(Sigma)/B``, the averages of ``|G_B|^2`` at ``small``
    and ``big`` give unbiased estimates of both terms.
    """
    m = X.shape[1]
    big = min(big, m)
    small = min(small, big // 2)
    norms = {}
    rng = np.random.default_rng(seed)
    for size in (small, big):
        values = []
        for k, (X_t, Y_t) in enumerate(minibatches(X, Y, size, seed=rng, drop_last=True)):
            if k >= batches:
                break
            g = trainer.gradient(X_t, Y_t)
            values.append(float(g @ g))
        norms[size] = float(np.mean(values))
    g2 = (big * norms[big] - small * norms[small]) / (big - small)
    trace = (norms[small] - norms[big]) / (1.0 / small - 1.0 / big)
    b_simple = trace / g2 if g2 > 0 else math.inf
    meaning = (f"gradient noise scale B_simple ~ {b_simple:.0f} (from |G_B|^2 at B={small} and "
               f"{big}): batches well below it make nearly B times the progress per step (the "
               "noise dominates, so a larger batch saves steps); well above it, extra samples "
               "per step are mostly wasted. Training at B takes about (1 + B_simple/B) x the "
               "fewest possible steps and (1 + B/B_simple) x the fewest samples.")
    return {"b_simple": b_simple, "trace_sigma": trace, "grad_norm_sq": g2,
            "small": small, "big": big, "meaning": meaning}


def profile_batch_sizes(X, Y, *, sizes: Sequence[int] | None = None,
                        layer_sizes: Sequence[int] | None = None,
                        trainer_factory: Callable[[], object] | None = None,
                        optimizer: str = "adam", lr: float | None = None,
                        seconds: float = 2.0, backend: str | None = None,
                        memory_limit: int | None = None, seed: int = 0,
                        progress: bool = True, noise_scale: bool = True,
                        target_fraction: float = 0.05, out_dir: str | None = None,
                        repeats: int | None = None, precision: str = "fp32") -> Profile:
    """Train at each batch size and recommend the one that lowers the cost fastest.

    "Fastest" is the shortest training time for the cost on the training set to
    fall to ``target_fraction`` of its starting value (5% by default); sizes that
    do not get there within ``seconds`` rank by how far the cost fell per second.

    Args:
        X, Y: the training set, ``X: (n_x, m)``, ``Y: (n_y, m)`` (NumPy or CuPy).
        sizes: batch sizes to try (default: powers of two from 32 to 1024 below ``m``, and ``m``).
        layer_sizes: the :class:`fusedopt.MLP` to train (default ``[n_x, 64, n_y]``).
        trainer_factory: instead, a callable returning a fresh trainer with
            ``step(X_t, Y_t) -> cost`` and ``cost(X, Y) -> cost`` (and, for the
            noise scale, ``gradient(X_t, Y_t) -> flat array``).
        optimizer, lr: for the MLP trainer.
        seconds: the most training time per batch size.
        backend: ``"cupy"`` to plan for the GPU (the arrays decide where training runs).
        memory_limit: bytes to plan for; sizes whose predicted peak exceeds what the plan
            may use of it (the limit less the planner's margin) are not run.
        progress: show a progress bar (tqdm) on stderr.
        noise_scale: estimate the gradient noise scale.
        target_fraction: the cost target, as a fraction of the starting cost.
        out_dir: if given, write ``profile.json`` and the PNG plots there.
        repeats: probes per size, interleaved (default ``config.PROFILER_REPEATS``); the
            table gives each size's median and spread, and sizes within noise of the
            fastest are a tie that the largest of them wins.
        precision: the default model's recipe (:mod:`fusedopt.train.precision`): fp32, bf16,
            bf16-sr or fp16-master; the plan counts its slots in their dtypes.
    """
    f = "profile_batch_sizes"
    precisions.check(precision, "cupy" if backend == "cupy" else "numpy")
    if out_dir is not None:
        out_dir = _checks.output_dir(f, "out_dir", out_dir)
    _checks.real(f, "seconds", seconds, 0.0, lo_open=True)
    repeats = _checks.count(f, "repeats", config.PROFILER_REPEATS if repeats is None
                            else repeats, "probes per batch size", "probe each size once")
    _checks.real(f, "target_fraction", target_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
    m = X.shape[1]
    n_x, n_y = X.shape[0], Y.shape[0]
    xp = "cupy" if _checks.array_kind(X) == "cupy" else "numpy"
    if sizes is None:
        sizes = {b for b in (32, 64, 128, 256, 512, 1024) if b < m} | {m}
    if any(isinstance(b, bool) or not isinstance(b, Integral) or b < 1 for b in sizes) \
            or not sizes:
        raise ValueError(f"{f}: sizes must be positive integers, e.g. [64, 128, 256]")
    # Largest first, so that after an out-of-memory the sweep goes on with smaller sizes; a
    # size above m is the full batch.
    sizes = sorted({min(int(b), m) for b in sizes}, reverse=True)
    plan = None
    if trainer_factory is None:
        layer_sizes = list(layer_sizes) if layer_sizes else [n_x, 64, n_y]

        def trainer_factory():
            return MLPTrainer(layer_sizes, optimizer=optimizer, lr=lr, xp=xp, seed=seed,
                              precision=precision)

        plan = planner.plan_batch_size(X, Y, layer_sizes=layer_sizes, optimizer=optimizer,
                                       memory_limit=memory_limit, backend=backend,
                                       precision=precision,
                                       extra_bytes=0 if xp == "cupy"
                                       else config.PROFILER_RECORD_BYTES)
        one = plan.peak_bytes_at(1)
        if one is not None and one > plan.usable_bytes:  # before the model is even built
            raise ValueError(f"{f}: layer_sizes={layer_sizes} needs {one:,} bytes at batch size "
                             f"1, and {plan.usable_bytes:,} are usable; use smaller layers")
    evaluation = min(m, 4096)
    X_eval, Y_eval = X[:, :evaluation], Y[:, :evaluation]
    # Warm up (JIT compile or cache load, first-touch of the code paths) outside any probe,
    # on a few samples: the probes themselves catch running out of memory.
    warm = trainer_factory()
    warm.step(X[:, :min(m, 8)], Y[:, :min(m, 8)])
    warm.cost(X[:, :min(m, 8)], Y[:, :min(m, 8)])
    del warm
    found: dict[int, Probe] = {}
    with contextlib.ExitStack() as stack:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = stack.enter_context(tqdm(total=len(sizes) * (1 + repeats),
                                           desc="batch sizes", unit="run", file=sys.stderr))
        # 1. Train once at each size, largest first (after an out-of-memory the smaller
        # sizes go on): the steps to the target cost, the same whatever the timing.
        for b in sizes:
            planned = plan.peak_bytes_at(b) if plan is not None else None
            if memory_limit is not None and planned is not None and planned > plan.usable_bytes:
                found[b] = Probe(b, "predicted not to fit", planned_peak_bytes=planned,
                                 error=f"needs {planned} bytes; {plan.usable_bytes} usable of "
                                       f"memory_limit {memory_limit}")
            else:
                try:
                    found[b] = _probe(trainer_factory, X, Y, X_eval, Y_eval, b, seconds,
                                      seed, planned, target_fraction)
                except _oom_errors() as exc:
                    found[b] = Probe(b, "out of memory", planned_peak_bytes=planned,
                                     error=f"{type(exc).__name__}: {exc}"[:200])
            if bar is not None:
                bar.set_postfix_str(f"b={b}: {found[b].status}")
                bar.update(1)
        # 2. Time a step at each size, round after round, interleaved: noise on a shared
        # machine hits every size alike, and the rounds give each time its spread.
        timed = [b for b in sizes if found[b].status == "ok"]
        rounds: dict[int, list[float]] = {b: [] for b in timed}
        for r in range(repeats):
            for b in (timed if r % 2 else timed[::-1]):  # each size early and late in turn
                try:
                    rounds[b].append(_step_seconds(trainer_factory, X, Y, b, seed))
                except _oom_errors():  # the probe fit; a timing run cannot need more
                    pass
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.update(len(sizes) - len(timed))
    model = step_time_model(rounds)
    probes = sorted((combine(found[b], rounds.get(b, []), model) for b in sizes),
                    key=lambda p: p.batch_size)
    ok = [p for p in probes if p.status == "ok"]
    recommended, rule = recommend(probes)
    comparison = rule + "\n" + _compare(plan, recommended, probes)
    noise = None
    if noise_scale and ok:
        trainer = trainer_factory()
        if hasattr(trainer, "gradient") and m >= 4:  # two batch sizes need a few samples
            noise = gradient_noise_scale(trainer, X, Y, seed=seed)
    profile = Profile(probes, recommended, plan, comparison, noise, m, target_fraction)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "profile.json"), "w") as f:
            json.dump(finite_json(profile.to_json()), f, indent=2)
        profile.plot(out_dir)
    return profile


def _step_seconds(trainer_factory, X, Y, b: int, seed: int) -> float:
    """Seconds of one training step at batch size ``b`` (a fresh model, one batch, at least
    2 ms of steps timed after one untimed step)."""
    trainer = trainer_factory()
    X_t, Y_t = next(iter(minibatches(X, Y, b, seed=seed)))
    start = time.perf_counter()
    trainer.step(X_t, Y_t)
    once = max(time.perf_counter() - start, 1e-7)
    count = min(64, max(2, math.ceil(2e-3 / once)))
    start = time.perf_counter()
    for _ in range(count):
        trainer.step(X_t, Y_t)
    return (time.perf_counter() - start) / count


class _Trace:
    """At most ``capacity`` (seconds, cost) points in one preallocated array: when full, every
    other point is dropped and only every other later one kept, so a long run's record
    stays a fixed, small size (the planner counts it: ``config.PROFILER_RECORD_BYTES``)."""

    def __init__(self, capacity: int):
        self.points = np.empty((capacity, 2))
        self.n = 0
        self.stride = 1
        self.seen = 0

    def add(self, seconds: float, cost: float) -> None:
        self.seen += 1
        if (self.seen - 1) % self.stride:
            return
        if self.n == len(self.points):
            self.points[: self.n // 2] = self.points[0:self.n:2]
            self.n //= 2
            self.stride *= 2
        self.points[self.n] = seconds, cost
        self.n += 1

    def as_list(self) -> list[tuple[float, float]]:
        return [(float(t), float(c)) for t, c in self.points[: self.n]]

    def as_array(self) -> np.ndarray:
        return self.points[: self.n].copy()

    def last(self) -> tuple[float, float]:
        return tuple(self.points[self.n - 1])


def _probe(trainer_factory, X, Y, X_eval, Y_eval, b, seconds, seed, planned,
           target_fraction) -> Probe:
    """Train a fresh model at batch size ``b`` until the cost falls to the target or time is up.

    The time to the target is the number of steps it took times the median time of a
    step: with the seeds fixed, the steps are the same in every repeat, and the median
    step time is the timing least disturbed by a noisy machine. The training-set cost
    is evaluated at step counts growing by 5% (every step for the first 20), so the
    step that reaches the target is known to 5%; evaluation runs in chunks of ``b``
    columns (no more memory than training at ``b``) and is not counted as training.
    """
    trainer = trainer_factory()
    if hasattr(trainer, "eval_chunk"):  # evaluate at the probed size: no more memory than b
        trainer.eval_chunk = b
    cost_start = trainer.cost(X_eval, Y_eval)
    target = cost_start * target_fraction
    m = X.shape[1]
    curve = _Trace(config.PROFILER_CURVE_POINTS)
    costs = _Trace(config.PROFILER_CURVE_POINTS // 4)
    costs.add(0.0, cost_start)
    durations = np.empty(config.PROFILER_CURVE_POINTS)  # the latest step times, a ring
    steps = samples = 0
    elapsed = 0.0
    next_eval = 1
    reached_step = None
    epoch_rng = np.random.default_rng(seed)
    while elapsed < seconds and reached_step is None:
        for X_t, Y_t in minibatches(X, Y, b, seed=epoch_rng):
            t0 = time.perf_counter()
            cost = trainer.step(X_t, Y_t)
            spent = time.perf_counter() - t0
            durations[steps % len(durations)] = spent
            elapsed += spent
            steps += 1
            samples += X_t.shape[1]
            curve.add(elapsed, float(cost))
            if steps >= next_eval or elapsed >= seconds:
                next_eval = steps + max(1, steps // 20) if steps >= 20 else steps + 1
                now = trainer.cost(X_eval, Y_eval)
                costs.add(elapsed, now)
                if now <= target:
                    reached_step = steps
                    break
            if elapsed >= seconds:
                break
        if hasattr(trainer, "opt"):
            trainer.opt.next_epoch()
    del trainer  # the model's memory goes before the records become Python lists
    step_time = (float(np.median(durations[: min(steps, len(durations))])) if steps else 0.0)
    cost_end = costs.last()[1]
    rate = samples / elapsed if elapsed > 0 else 0.0
    return Probe(b, "ok", seconds=elapsed, steps=steps, samples_per_s=rate,
                 epoch_seconds=m / rate if rate else math.inf, cost_start=cost_start,
                 cost_end=cost_end, cost_reduction_per_s=(cost_start - cost_end) / elapsed,
                 time_to_target=None if reached_step is None else reached_step * step_time,
                 planned_peak_bytes=planned, curve=curve.as_array(),
                 eval_curve=costs.as_array(), steps_to_target=reached_step,
                 step_seconds=step_time, m_over_b=-(-m // b))



def _compare(plan, recommended, probes) -> str:
    if recommended is None:
        return "no batch size could be measured"
    if plan is None:
        return f"measured best: {recommended} (no plan: a custom trainer)"
    by_size = {p.batch_size: p for p in probes}
    planned = by_size.get(plan.batch_size)
    if plan.batch_size == recommended:
        return f"the plan ({plan.batch_size}) and the measurement agree"
    if planned is None or planned.status != "ok":
        return (f"the plan chose {plan.batch_size} (not measured here); the measurement "
                f"recommends {recommended}")
    best, theirs = by_size[recommended], planned
    if best.time_to_target and theirs.time_to_target:
        how = (f"reached the target cost in {best.time_to_target:.3f} s against "
               f"{theirs.time_to_target:.3f} s ({theirs.time_to_target / best.time_to_target:.1f}x"
               " faster)")
    else:
        ratio = speed(best) / speed(theirs) if speed(theirs) > 0 else math.inf
        how = f"lowered the cost {ratio:.2f}x as fast"
    return (f"the plan chose {plan.batch_size} by the lecture's rules; measured, {recommended} "
            f"{how} on this machine")
