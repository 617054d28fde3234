"""What one ``fo.<rule>_`` call costs beyond its kernel: ``fusedopt bench --per-call``.

For small arrays (4096 elements by default) the work is a few microseconds, and the
Python around it (the checks, the scalars, the dispatch) decides the time. Each case
times, in interleaved rounds (medians, one run):

``fusedopt``   ``fo.<rule>_(...)``: the checks, the scalars, the launch
``kernel``     the compiled kernel alone with its prepared scalars (on the CPU the Numba
               serial driver, dispatch included; on a GPU the same ``RawKernel`` launched
               directly): the floor a call cannot go below

On a GPU both are host times per call (launches are asynchronous; the stream is
synchronised after each sample).
"""

from __future__ import annotations

import statistics

import numpy as np


def _arrays(rule, n: int, xp, dtype=np.float32) -> list:
    rng = np.random.default_rng(0)
    out = []
    for name in rule.arrays:
        values = rng.standard_normal(n).astype(dtype)
        if name in rule.nonnegative:
            values = np.abs(values)
        out.append(xp.asarray(values))
    return out


def _kwargs(rule) -> dict:
    kwargs = {}
    if rule.needs_step:
        kwargs["step"] = 3
    for h in rule.hyper:
        if h.required:
            kwargs[h.name] = rule.typical_lr if h.name == "lr" else 0.1
    return kwargs


def measure(rules=("adam", "sgd"), n: int = 4096, backend: str = "numba",
            min_repeats: int | None = None, min_seconds: float | None = None) -> list[dict]:
    """Per-call seconds of ``fo.<rule>_`` and of its kernel alone, for each rule."""
    import fusedopt as fo
    from fusedopt import bench
    from fusedopt.kernels import RULES

    min_repeats, min_seconds = bench._timing(min_repeats, min_seconds)
    rows = []
    for name in rules:
        rule = RULES[name]
        if backend == "cupy":
            import cupy

            arrays = _arrays(rule, n, cupy)
            sync = cupy.cuda.get_current_stream().synchronize
        else:
            arrays, sync = _arrays(rule, n, np), None
        function = fo.functional.FUNCTIONS[name + "_"]
        kwargs = _kwargs(rule)
        kernel = _bare_kernel(rule, arrays, kwargs, backend)

        def call(function=function, arrays=arrays, kwargs=kwargs):
            function(*arrays, **kwargs)

        steps = {"fusedopt": call, "kernel": kernel}
        if sync is not None:
            steps = {k: _synced(f, sync) for k, f in steps.items()}
        samples, _ = bench._round_robin(steps, min_repeats, min_seconds)
        per_step = 64 if sync is not None else 1  # a synced step is 64 calls
        medians = {k: statistics.median(v) / per_step for k, v in samples.items()}
        rows.append({"rule": name, "n": n, "backend": backend,
                     "call_us": medians["fusedopt"] * 1e6, "kernel_us": medians["kernel"] * 1e6,
                     "x_kernel": medians["fusedopt"] / medians["kernel"]})
    return rows


def _synced(step, sync, calls: int = 64):
    """``calls`` calls, then one synchronisation: a host time per call that includes the
    launches' completion without timing one sync per launch."""
    def run():
        for _ in range(calls):
            step()
        sync()
    return run


def _bare_kernel(rule, arrays, kwargs, backend: str):
    """The compiled kernel of ``fo.<rule>_`` called directly with prepared scalars."""
    from fusedopt.backends import get
    from fusedopt.kernels.dtypes import homogeneous

    impl = get(backend)
    hyper = {**rule.defaults, **kwargs}
    sig = homogeneous(rule.arrays, arrays[0].dtype)
    prepared = impl.prepare(rule, hyper, sig)
    if backend == "cupy":

        from fusedopt.backends import cupy_cuda

        scalars, _ = prepared
        vector = cupy_cuda.use_vector_kernel([a.data.ptr for a in arrays])
        raw = cupy_cuda._kernel(rule.name, sig, 0, vector)
        blocks, threads = cupy_cuda.launch_config(arrays[0].size, vector, sig,
                                                  cupy_cuda._multiprocessors(0))
        args = (*arrays, *scalars, np.int64(arrays[0].size))
        return lambda: raw((blocks,), (threads,), args)
    scalars, serial = prepared[0], prepared[1]
    return lambda: serial(*arrays, scalars)


def format_table(rows: list[dict]) -> str:
    lines = [f"{'rule':<10}{'n':>8}  {'backend':<8}{'fo.<rule>_':>12}{'kernel':>10}"
             f"{'x kernel':>10}"]
    for r in rows:
        lines.append(f"{r['rule']:<10}{r['n']:>8}  {r['backend']:<8}{r['call_us']:>9.2f} us"
                     f"{r['kernel_us']:>7.2f} us{r['x_kernel']:>10.2f}")
    return "\n".join(lines)


__all__ = ["format_table", "measure"]
