"""``fusedopt bench --precision --backend cupy``: the precision recipes on a GPU.

The recipes of :mod:`fusedopt.bench_precision`, run on torch CUDA tensors (CuPy
has no bfloat16 dtype), each as a fraction of a device copy moving the same
bytes, next to torch's fused Adam on bfloat16 parameters and state.
"""

from __future__ import annotations

import numpy as np

from fusedopt import functional
from fusedopt.bench_precision import HYPER, RECIPES
from fusedopt.kernels import RULES


def cuda_times(torch, fn, repeats: int, warmup: int = 3) -> list[float]:
    """Seconds per call of ``fn``, by CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return times


def _stepper(function, tensors, kwargs):
    """A zero-argument call of ``function`` on ``tensors`` with a new step each time."""
    step = [0]

    def run():
        step[0] += 1
        function(*tensors, step=step[0], **kwargs)

    return run


def run_gpu(rule_name: str, n: int = 2**28, repeats: int = 15,
            recipes=tuple(RECIPES)) -> list[dict]:
    """Each recipe of ``rule_name`` on torch CUDA tensors (bfloat16 needs torch: CuPy has no
    bfloat16 dtype), as a fraction of a device copy moving the recipe's bytes, and (Adam)
    torch's fused Adam on bfloat16 parameters and state; speedups against the fp32 recipe."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError("--backend cupy --precision needs torch with CUDA and a GPU "
                         "(CuPy has no bfloat16 dtype; the recipes run on torch CUDA tensors)")
    spec = RULES[rule_name]
    dtypes_ = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    rows = []
    for recipe in ("fp32", *(r for r in recipes if r != "fp32")):  # fp32: the baseline
        param, _, state, master, stochastic = RECIPES[recipe]
        tensors = []
        for k, name in enumerate(spec.arrays):
            storage = param if k == 0 or name not in spec.writes else state
            t = torch.randn(n, device="cuda").to(dtypes_[storage])
            tensors.append(t.abs_() if name in spec.nonnegative else t)
        kwargs = dict(HYPER[rule_name])
        if master:
            kwargs["master"] = tensors[0].float()
        if stochastic:
            kwargs.update(stochastic_rounding=True, seed=1)
        nbytes = sum(t.element_size() * n * (2 if name in spec.writes else 1)
                     for t, name in zip(tensors, spec.arrays, strict=True))
        if master:  # the master read and written, the 16-bit parameter only written
            nbytes += 2 * 4 * n - tensors[0].element_size() * n
        median = float(np.median(cuda_times(
            torch, _stepper(functional.FUNCTIONS[rule_name + "_"], tensors, kwargs), repeats)))
        source = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
        target = torch.empty_like(source)
        copy = float(np.median(cuda_times(torch, lambda s=source, t=target: t.copy_(s),
                                           repeats)))
        rows.append(dict(rule=rule_name, n=n, recipe=recipe, median_s=median,
                         bytes_moved=nbytes, fraction_of_copy_bw=copy / median))
        del tensors, kwargs, source, target
        torch.cuda.empty_cache()
    if rule_name == "adam":
        p = torch.nn.Parameter(torch.randn(n, device="cuda").to(torch.bfloat16))
        p.grad = torch.randn(n, device="cuda").to(torch.bfloat16)
        opt = torch.optim.Adam([p], lr=1e-3, fused=True)
        rows.append(dict(rule=rule_name, n=n, recipe="torch fused (bf16 params, state)",
                         median_s=float(np.median(cuda_times(torch, opt.step, repeats))),
                         bytes_moved=14 * n, fraction_of_copy_bw=None))
        del p, opt
        torch.cuda.empty_cache()
    fp32 = next(r["median_s"] for r in rows if r["recipe"] == "fp32")
    for r in rows:
        r["speedup_vs_fp32"] = fp32 / r["median_s"]
    return rows


def format_gpu_table(rows: list[dict]) -> str:
    lines = [f"{'rule':<9} {'recipe':<34} {'ms':>8} {'x copy bw':>9} {'speedup vs fp32':>15}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        fraction = "-" if r["fraction_of_copy_bw"] is None else f"{r['fraction_of_copy_bw']:.2f}"
        lines.append(f"{r['rule']:<9} {r['recipe']:<34} {r['median_s'] * 1e3:>8.3f} "
                     f"{fraction:>9} {r['speedup_vs_fp32']:>14.2f}x")
    return "\n".join(lines)
