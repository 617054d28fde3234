"""The update-step benchmark, shared by ``fusedopt bench`` and ``bench/`` (pytest-benchmark).

For each rule and size it times, in one run and interleaved round by round so
that drift on a shared machine hits every implementation alike:

``fusedopt``       the fused update (``backend=None``: Numba on NumPy arrays)
``floor``          a Numba loop moving the same memory streams with trivial math:
                   the bandwidth floor this machine allows the update
``reference``      the unfused NumPy reference (``backend="numpy"``), what a user
                   would write in NumPy
``torch_fused``    ``torch.optim.<Rule>(fused=True).step()`` (when torch has it)
``torch_foreach``  ``torch.optim.<Rule>(foreach=True).step()``

and reports medians, effective bandwidth and the ratios the targets are set in.
Every optimizer rule of the registry is benchmarked the same way: its call,
its starting state and its torch equivalent all come from its registry entry.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from fusedopt import config, functional
from fusedopt.kernels import REQUIRED, RULES, Rule
from fusedopt.kernels.dtypes import homogeneous

IMPLS: tuple[str, ...] = ("fusedopt", "floor", "reference", "torch_fused", "torch_foreach")


def bench_rules() -> tuple[str, ...]:
    """Every registered optimizer rule (``ewa`` is a building block, not an optimizer)."""
    return tuple(name for name, r in RULES.items() if r.is_optimizer_rule)


#: Every benchmark steps at this rate, from each rule's defaults, except where a default
#: has no torch equivalent (the lecture's damped momentum): there the torch-comparable value.
BENCH_LR = 1e-3
_BENCH_OVERRIDES = {"dampening": 0.0}


def bench_hyper(rule: Rule) -> dict:
    """The hyperparameters every benchmark of ``rule`` uses: its defaults, ``lr=1e-3``, and
    0.9 for a decay rate it requires (``ewa``'s ``beta``)."""
    hyper = {h.name: h.default for h in rule.hyper if h.name != "grad_scale"}
    if "lr" in hyper:
        hyper["lr"] = BENCH_LR
    for h in rule.hyper:
        if h.required and (h.lo, h.hi, h.hi_open) == (0.0, 1.0, True):
            hyper[h.name] = 0.9
    for name, value in _BENCH_OVERRIDES.items():
        if name in hyper:
            hyper[name] = value
    missing = [k for k, v in hyper.items() if v is REQUIRED]
    if missing:
        raise ValueError(f"rule {rule.name!r}: no benchmark value for {missing}")
    return hyper


def torch_equivalent(rule: Rule) -> tuple[str, dict] | None:
    """torch.optim's class and keywords for the same update as :func:`bench_hyper`."""
    if rule.torch_equivalent is None:
        return None
    return rule.torch_equivalent({**bench_hyper(rule), "grad_scale": 1.0})


@dataclass
class Result:
    """One implementation of one rule at one size."""

    rule: str
    impl: str
    n: int
    median_s: float
    bytes_moved: int
    samples: int

    @property
    def gb_per_s(self) -> float:
        return self.bytes_moved / self.median_s / 1e9


def bytes_moved(rule_name: str, n: int, itemsize: int = 4) -> int:
    """Bytes the update must move: each array read once, each written array written once."""
    return RULES[rule_name].bytes_per_element_factor * n * itemsize


def _state(rule_name: str, n: int, dtype, rng) -> tuple[np.ndarray, ...]:
    rule = RULES[rule_name]
    arrays = [rng.standard_normal(n).astype(dtype) for _ in rule.arrays]
    for name in rule.nonnegative:  # second moments are never negative
        k = rule.arrays.index(name)
        arrays[k] = np.abs(arrays[k])
    return tuple(arrays)


def rule_call(update: Callable, rule: Rule, arrays, backend: str | None) -> Callable[[], None]:
    """A zero-argument callable doing one ``update`` (``fo.<rule>_``) of ``arrays``, counting
    the step where the rule needs one."""
    hyper = bench_hyper(rule)
    if not rule.needs_step:
        return lambda: update(*arrays, **hyper, backend=backend)
    step = [0]

    def run():
        step[0] += 1
        update(*arrays, step=step[0], **hyper, backend=backend)

    return run


def _fusedopt_call(rule_name: str, arrays, backend: str | None) -> Callable[[], None]:
    if rule_name not in RULES:
        raise ValueError(f"no benchmark for rule {rule_name!r}")
    return rule_call(functional.FUNCTIONS[rule_name + "_"], RULES[rule_name], arrays, backend)


def make_step(rule_name: str, impl: str, n: int, dtype=np.float32,
              seed: int = 0) -> Callable[[], None] | None:
    """A zero-argument callable doing one update, or None where ``impl`` is unavailable here."""
    rng = np.random.default_rng(seed)
    arrays = _state(rule_name, n, dtype, rng)
    if impl == "fusedopt":
        return _fusedopt_call(rule_name, arrays, None)
    if impl == "reference":
        return _fusedopt_call(rule_name, arrays, "numpy")
    if impl == "floor":
        from fusedopt.backends import numba_cpu

        rule = RULES[rule_name]
        signature = homogeneous(rule.arrays, dtype)
        return lambda: numba_cpu.floor(rule, arrays, signature)
    if impl in ("torch_fused", "torch_foreach"):
        try:
            import torch
        except ImportError:
            return None
        equivalent = torch_equivalent(RULES[rule_name])
        if equivalent is None:
            return None
        cls_name, kwargs = equivalent
        param = torch.nn.Parameter(torch.from_numpy(arrays[0]))
        param.grad = torch.from_numpy(arrays[1])
        flag = {"torch_fused": "fused", "torch_foreach": "foreach"}[impl]
        try:
            opt = getattr(torch.optim, cls_name)([param], **kwargs, **{flag: True})
            opt.step()
        except (TypeError, RuntimeError):  # e.g. RMSprop has no fused variant
            return None
        return opt.step
    raise ValueError(f"impl={impl!r} is not one of {IMPLS}")


def _timing(min_repeats, min_seconds) -> tuple[int, float]:
    """The rounds and seconds to sample for, defaulted and checked (at least one round)."""
    from fusedopt import _checks

    min_repeats = config.BENCH_MIN_REPEATS if min_repeats is None else min_repeats
    min_seconds = config.BENCH_MIN_SECONDS if min_seconds is None else min_seconds
    min_repeats = _checks.count("bench", "min_repeats", min_repeats, "timed rounds",
                                "at least one round is timed")
    return min_repeats, _checks.real("bench", "min_seconds", min_seconds, 0.0)


def _inner_calls(step: Callable[[], None], target_s: float = 2e-3) -> int:
    """How many calls make one timing sample long enough for the clock."""
    start = time.perf_counter()
    step()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, int(target_s / once))


def _round_robin(steps: dict[str, Callable[[], None]], min_repeats: int,
                 min_seconds: float) -> tuple[dict[str, list[float]], int]:
    """Seconds per call of each step, sampled in interleaved rounds (drift hits all alike)."""
    prepared = {}
    for impl, step in steps.items():
        for _ in range(2):  # compile, touch the pages, fill the caches
            step()
        prepared[impl] = (step, _inner_calls(step))
    samples: dict[str, list[float]] = {impl: [] for impl in prepared}
    started = time.perf_counter()
    rounds = 0
    while rounds < min_repeats or time.perf_counter() - started < min_seconds:
        for impl, (step, inner) in prepared.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                step()
            samples[impl].append((time.perf_counter() - t0) / inner)
        rounds += 1
        if rounds >= 200:
            break
    return samples, rounds


def measure(rule_name: str, n: int, impls=IMPLS, *, min_repeats: int | None = None,
            min_seconds: float | None = None, dtype=np.float32,
            progress: Callable[[str], None] | None = None) -> list[Result]:
    """Time ``impls`` of ``rule_name`` at ``n`` elements, round-robin; medians per call."""
    min_repeats, min_seconds = _timing(min_repeats, min_seconds)
    steps = {}
    for impl in impls:
        step = make_step(rule_name, impl, n, dtype)
        if step is not None:
            steps[impl] = step
    samples, rounds = _round_robin(steps, min_repeats, min_seconds)
    if progress:
        progress(f"{rule_name} n={n}: {rounds} rounds")
    itemsize = np.dtype(dtype).itemsize
    results = [Result(rule_name, impl, n, statistics.median(times),
                      bytes_moved(rule_name, n, itemsize), len(times))
               for impl, times in samples.items()]
    del steps
    gc.collect()
    return results


# ----------------------------------------------------- a whole model: 157 tensors
MODEL_IMPLS: tuple[str, ...] = ("arena", "list", "arena_clip_nonfinite",
                                "arena_clip_capturable", "floor", "fusedopt_torch",
                                "fusedopt_torch_capturable", "torch_fused", "torch_foreach")


def transformer_like_shapes(layers: int = 12, d: int = 256, vocab: int = 5000,
                            mlp: int = 4) -> list[tuple[int, ...]]:
    """ANCHORS.md's set: 12 layers at d=256 (13 tensors each) and a 5000x256 embedding.

    157 tensors, 10.76M parameters.
    """
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(layers):
        shapes += [(d, 3 * d), (3 * d,), (d, d), (d,),            # attention
                   (d,), (d,), (d,), (d,),                        # two layer norms
                   (d, mlp * d), (mlp * d,), (mlp * d, d), (d,),  # MLP
                   (d,)]                                          # a layer scale
    return shapes


def make_model_step(impl: str, shapes, seed: int = 0) -> Callable[[], None] | None:
    """One Adam step over the whole set of tensors, or None where ``impl`` is unavailable."""
    from fusedopt.arena import ParamArena
    from fusedopt.optim import Adam

    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    if impl in ("arena", "arena_clip_nonfinite", "arena_clip_capturable", "floor"):
        arena = ParamArena(params)
        for view, g in zip(arena.grads, grads, strict=True):
            view[...] = g
        if impl == "floor":
            from fusedopt.backends import numba_cpu

            (p, g), = arena.buffers.values()
            m, v = np.zeros_like(p), np.zeros_like(p)
            adam = RULES["adam"]
            signature = homogeneous(adam.arrays, p.dtype)
            return lambda: numba_cpu.floor(adam, (p, g, m, v), signature)
        extra = ({} if impl == "arena" else dict(max_grad_norm=1e9, nonfinite="skip",
                                                  capturable=impl == "arena_clip_capturable"))
        return Adam(arena, lr=1e-3, **extra).step
    if impl == "list":
        opt = Adam(params, lr=1e-3)
        return lambda: opt.step(grads)
    if impl in ("torch_fused", "torch_foreach", "fusedopt_torch", "fusedopt_torch_capturable"):
        try:
            import torch
        except ImportError:
            return None
        tparams = [torch.nn.Parameter(torch.from_numpy(p)) for p in params]
        for tp, g in zip(tparams, grads, strict=True):
            tp.grad = torch.from_numpy(g)
        if impl.startswith("fusedopt_torch"):
            import fusedopt.torch as fot

            return fot.Adam(tparams, lr=1e-3, capturable=impl.endswith("capturable")).step
        flag = {"torch_fused": "fused", "torch_foreach": "foreach"}[impl]
        return torch.optim.Adam(tparams, lr=1e-3, **{flag: True}).step
    raise ValueError(f"impl={impl!r} is not one of {MODEL_IMPLS}")


def measure_model(impls=MODEL_IMPLS, *, shapes=None, min_repeats: int | None = None,
                  min_seconds: float | None = None) -> list[dict]:
    """Adam over the 157-tensor set: each implementation's median step, and the ratios."""
    shapes = transformer_like_shapes() if shapes is None else shapes
    min_repeats, min_seconds = _timing(min_repeats, min_seconds)
    steps = {}
    for impl in impls:
        step = make_model_step(impl, shapes)
        if step is not None:
            steps[impl] = step
    samples, _ = _round_robin(steps, min_repeats, min_seconds)
    medians = {impl: statistics.median(t) for impl, t in samples.items()}
    n = sum(int(np.prod(s)) for s in shapes)

    def ratio(median, base):
        return median / medians[base] if base in medians else None

    rows = [{"impl": impl, "tensors": len(shapes), "elements": n, "median_s": median,
             "samples": len(samples[impl]), "x_torch_fused": ratio(median, "torch_fused"),
             "x_arena": ratio(median, "arena"), "x_floor": ratio(median, "floor")}
            for impl, median in medians.items()]
    del steps
    gc.collect()
    return rows


def format_model_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`measure_model` rows."""
    def num(x):
        return f"{x:>14.2f}" if x is not None else f"{'-':>14}"

    first = rows[0]
    lines = [f"Adam over {first['tensors']} tensors, {first['elements']:,} fp32 parameters",
             f"{'impl':<26}{'median':>11}{'x torch fused':>14}{'x arena':>14}{'x floor':>14}",
             "-" * 79]
    for r in rows:
        lines.append(f"{r['impl']:<26}{r['median_s'] * 1e3:>8.3f} ms{num(r['x_torch_fused'])}"
                     f"{num(r['x_arena'])}{num(r['x_floor'])}")
    return "\n".join(lines)


def _check_memory(rules, sizes) -> None:
    """Refuse, before allocating anything, sizes whose arrays cannot fit in free memory.

    A case holds each of the rule's arrays in float32, and a peer (torch, the
    reference's temporaries) about as many again.
    """
    from fusedopt import devices

    free = devices.cpu_memory().available_bytes
    for rule_name in rules:
        n_arrays = len(RULES[rule_name].arrays) if rule_name in RULES else 4
        for n in sizes:
            need = 2 * n_arrays * 4 * int(n)
            if need > free:
                raise ValueError(f"sizes: {rule_name} at n={n} needs about {need:,} bytes and "
                                 f"{free:,} are free; use smaller sizes")


def run(rules=None, sizes=None, impls=IMPLS, **kwargs) -> list[Result]:
    """:func:`measure` over every rule (default: :func:`bench_rules`) and size."""
    rules = bench_rules() if rules is None else rules
    sizes = config.BENCH_SIZES if sizes is None else sizes
    _check_memory(rules, sizes)
    out: list[Result] = []
    for rule_name in rules:
        for n in sizes:
            out.extend(measure(rule_name, n, impls, **kwargs))
    return out


def ratios(results: list[Result]) -> list[dict]:
    """One row per (rule, n, impl), with ratios: x floor, x faster than ref, x torch fused."""
    by_case: dict[tuple[str, int], dict[str, Result]] = {}
    for r in results:
        by_case.setdefault((r.rule, r.n), {})[r.impl] = r
    rows = []
    for (_rule_name, _n), impls in by_case.items():
        floor = impls.get("floor")
        reference = impls.get("reference")
        torch_fused = impls.get("torch_fused")
        for _impl, r in impls.items():
            rows.append({
                **asdict(r),
                "gb_per_s": r.gb_per_s,
                "x_floor": r.median_s / floor.median_s if floor else None,
                "speedup_vs_reference": reference.median_s / r.median_s if reference else None,
                "x_torch_fused": r.median_s / torch_fused.median_s if torch_fused else None,
            })
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`ratios` rows."""
    def num(x, fmt):
        width = fmt[1:].split(".")[0]
        return format("-", f">{width}") if x is None else format(x, fmt)

    header = (f"{'rule':<9}{'n':>10}  {'impl':<14}{'median':>11}{'GB/s':>8}{'x floor':>9}"
              f"{'x faster than ref':>19}{'x torch fused':>15}")
    lines = [header, "-" * len(header)]
    last = None
    for row in rows:
        if last is not None and (row["rule"], row["n"]) != last:
            lines.append("")
        last = (row["rule"], row["n"])
        median = row["median_s"]
        shown = f"{median * 1e3:.3f} ms" if median >= 1e-3 else f"{median * 1e6:.2f} us"
        lines.append(
            f"{row['rule']:<9}{row['n']:>10}  {row['impl']:<14}{shown:>11}"
            f"{row['gb_per_s']:>8.1f}{num(row['x_floor'], '>9.2f')}"
            f"{num(row['speedup_vs_reference'], '>19.1f')}{num(row['x_torch_fused'], '>15.2f')}"
        )
    return "\n".join(lines)
