"""GPU benchmark: each rule's fused CUDA kernel vs unfused CuPy, a device copy and torch fused.

    fusedopt bench --backend cupy [--model] [--json] [--sizes 20,24,28] [--repeats 25]
    python bench/gpu_bench.py --out OUT_DIR      (the repository's caller of this module)

For every rule at 2^20, 2^24 and 2^28 fp32 elements it times, with CUDA events
after warm-up (medians):

``fusedopt``          the fused kernel (128-bit loads: the arrays are aligned)
``fusedopt_scalar``   the same rule with one-element loads (``CUDA_VECTOR_LOADS`` off)
``cupy_unfused``      the same update as CuPy whole-array expressions (the reference)
``copy``              ``cudaMemcpyAsync`` of the same number of bytes: the bandwidth ceiling
``torch_fused``       the rule's torch.optim equivalent with ``fused=True`` (where torch has one)

and reports GB/s, the fraction of copy bandwidth reached and the ratio to torch.
Every rule of the registry is timed; its call, its starting state and its torch
equivalent come from its registry entry (through ``fusedopt.bench``).
Writes ``gpu_bench.json`` into OUT_DIR and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np


def rules_timed() -> tuple[str, ...]:
    """Every registered rule."""
    from fusedopt.kernels import RULES

    return tuple(RULES)


def time_cupy(cupy, fn, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) * 1e-3)
    return times


def time_torch(torch, fn, repeats: int, warmup: int = 3) -> list[float]:
    from fusedopt.bench_precision_gpu import cuda_times

    return cuda_times(torch, fn, repeats, warmup)


def copy_times(cupy, nbytes: int, repeats: int) -> list[float]:
    """A device-to-device copy moving ``nbytes`` in all (half read, half written)."""
    src = cupy.empty(nbytes // 2, cupy.uint8)
    dst = cupy.empty_like(src)
    return time_cupy(cupy, lambda: dst.data.copy_from_device_async(src.data, src.nbytes),
                     repeats)


def call(fo, rule: str, arrays, backend: str | None):
    """One fused update of ``arrays`` by ``rule``, as ``fusedopt bench`` makes it."""
    from fusedopt import bench
    from fusedopt.kernels import RULES

    return bench.rule_call(fo.functional.FUNCTIONS[rule + "_"], RULES[rule], arrays, backend)


def bench_rule(cupy, torch, fo, rule: str, n: int, repeats: int) -> list[dict]:
    from fusedopt import bench, config
    from fusedopt.kernels import RULES

    spec = RULES[rule]
    nbytes = spec.bytes_per_element_factor * n * 4
    rng = cupy.random.default_rng(0)
    arrays = [rng.standard_normal(n, dtype=cupy.float32) for _ in spec.arrays]
    for name in spec.nonnegative:  # second moments are never negative
        k = spec.arrays.index(name)
        cupy.abs(arrays[k], out=arrays[k])
    rows = []

    def record(impl, times):
        median = statistics.median(times)
        rows.append(dict(rule=rule, n=n, impl=impl, median_s=median, bytes_moved=nbytes,
                         gb_per_s=nbytes / median / 1e9, samples=len(times)))

    record("fusedopt", time_cupy(cupy, call(fo, rule, arrays, None), repeats))
    config.CUDA_VECTOR_LOADS = False
    try:
        record("fusedopt_scalar", time_cupy(cupy, call(fo, rule, arrays, None), repeats))
    finally:
        config.CUDA_VECTOR_LOADS = True
    record("cupy_unfused", time_cupy(cupy, call(fo, rule, arrays, "numpy"),
                                     max(5, repeats // 5)))
    del arrays
    record("copy", copy_times(cupy, nbytes, repeats))
    cupy.get_default_memory_pool().free_all_blocks()
    equivalent = bench.torch_equivalent(spec) if spec.is_optimizer_rule else None
    if torch is not None and equivalent is not None:
        cls, kwargs = equivalent
        p = torch.nn.Parameter(torch.randn(n, device="cuda"))
        p.grad = torch.randn(n, device="cuda")
        try:
            opt = getattr(torch.optim, cls)([p], **kwargs, fused=True)
            opt.step()
        except (TypeError, RuntimeError):  # no fused variant (NAdam, RMSprop)
            opt = None
        if opt is not None:
            record("torch_fused", time_torch(torch, opt.step, repeats))
        del p, opt
        torch.cuda.empty_cache()
    by_impl = {r["impl"]: r for r in rows}
    for r in rows:
        r["fraction_of_copy_bw"] = by_impl["copy"]["median_s"] / r["median_s"]
        r["x_torch_fused"] = (r["median_s"] / by_impl["torch_fused"]["median_s"]
                              if "torch_fused" in by_impl else None)
    return rows


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small's parameters: 148 tensors, 124.4M elements (embeddings, 12 blocks of 12
    tensors, the final layer norm)."""
    d, vocab, context = 768, 50257, 1024
    shapes: list[tuple[int, ...]] = [(vocab, d), (context, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,),   # ln_1, attention
                   (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]  # ln_2, MLP
    return [*shapes, (d,), (d,)]


def bench_model(cupy, torch, fo, repeats: int, shapes=None) -> list[dict]:
    """Adam over a model's tensors on the GPU (GPT-2 small by default): the arena (one
    launch), the list of arrays, fusedopt.torch, and torch's fused multi-tensor Adam."""
    shapes = gpt2_small_shapes() if shapes is None else shapes
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    arena = fo.ParamArena([cupy.asarray(a) for a in host])
    for view in arena.grads:
        view[...] = 1e-3
    opt = fo.Adam(arena, lr=1e-3)
    rows = [dict(impl="arena", median_s=statistics.median(time_cupy(cupy, opt.step, repeats)))]
    clip = fo.Adam(arena, lr=1e-3, max_grad_norm=1e9, nonfinite="skip")
    rows.append(dict(impl="arena_clip_nonfinite",
                     median_s=statistics.median(time_cupy(cupy, clip.step, repeats))))
    device_clip = fo.Adam(arena, lr=1e-3, max_grad_norm=1e9, nonfinite="skip", capturable=True)
    rows.append(dict(impl="arena_clip_capturable",
                     median_s=statistics.median(time_cupy(cupy, device_clip.step, repeats))))
    replay = _cupy_graph(cupy, device_clip.step)
    if replay is not None:
        rows.append(dict(impl="arena_clip_graph",
                         median_s=statistics.median(time_cupy(cupy, replay, repeats))))
    arrays = [cupy.asarray(a) for a in host]
    grads = [cupy.full_like(a, 1e-3) for a in arrays]
    listed = fo.Adam(arrays, lr=1e-3)
    rows.append(dict(impl="list", median_s=statistics.median(
        time_cupy(cupy, lambda: listed.step(grads), repeats))))
    arrays = grads = listed = None  # the list's memory goes before torch's copies arrive
    if torch is not None:
        import fusedopt.torch as fot

        params = [torch.nn.Parameter(torch.from_numpy(a).cuda()) for a in host]
        for p in params:
            p.grad = torch.full_like(p, 1e-3)
        for impl, opt in (("fusedopt_torch", fot.Adam(params, lr=1e-3)),
                          ("fusedopt_torch_capturable", fot.Adam(params, lr=1e-3,
                                                                 capturable=True)),
                          ("torch_fused", torch.optim.Adam(params, lr=1e-3, fused=True))):
            rows.append(dict(impl=impl, median_s=statistics.median(
                time_torch(torch, opt.step, repeats))))
            if impl == "fusedopt_torch_capturable":
                replay = _torch_graph(torch, opt.step)
                if replay is not None:
                    rows.append(dict(impl="fusedopt_torch_graph", median_s=statistics.median(
                        time_torch(torch, replay, repeats))))
    torch_time = next((r["median_s"] for r in rows if r["impl"] == "torch_fused"), None)
    arena_time = rows[0]["median_s"]
    for r in rows:
        r.update(tensors=len(shapes), elements=int(sum(a.size for a in host)),
                 x_torch_fused=None if torch_time is None else r["median_s"] / torch_time,
                 x_arena=r["median_s"] / arena_time)
    return rows


def _cupy_graph(cupy, step):
    """``step`` captured in a CUDA graph on a CuPy stream (after a warm-up call): a
    function replaying it on the current stream, or None where capture fails (the
    failure is printed: the table then lacks the row)."""
    try:
        step()
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            step()
            graph = stream.end_capture()
        return lambda: graph.launch(cupy.cuda.get_current_stream())
    except Exception as exc:  # a row missing, with why, is better than no benchmark
        print(f"CuPy graph capture failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def _torch_graph(torch, step):
    """``step`` captured with ``torch.cuda.graph`` after warm-up calls on a side stream:
    the graph's replay, or None where capture fails (printed)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph.replay
    except Exception as exc:
        print(f"torch CUDA graph capture failed: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return None


def model_table(model: list[dict]) -> str:
    lines = [f"Adam over {model[0]['tensors']} tensors ({model[0]['elements']:,} fp32):"]
    for r in model:
        x = "-" if r["x_torch_fused"] is None else f"{r['x_torch_fused']:.2f}"
        lines.append(f"  {r['impl']:<22}{r['median_s'] * 1e3:>8.3f} ms   x torch fused {x:>5}"
                     f"   x arena {r['x_arena']:.2f}")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = [f"{'rule':<9}{'n':>6}  {'impl':<16}{'median':>11}{'GB/s':>9}{'of copy':>9}"
             f"{'x torch':>9}"]
    for r in rows:
        x = "-" if r["x_torch_fused"] is None else f"{r['x_torch_fused']:.2f}"
        lines.append(f"{r['rule']:<9}{'2^' + str(int(np.log2(r['n']))):>6}  {r['impl']:<16}"
                     f"{r['median_s'] * 1e3:>8.3f} ms{r['gb_per_s']:>9.0f}"
                     f"{r['fraction_of_copy_bw']:>9.2f}{x:>9}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_out"),
                        help="folder for gpu_bench.json ('' writes none)")
    parser.add_argument("--sizes", default="20,24,28", help="powers of two")
    parser.add_argument("--rules", default=None, help="comma-separated (default: every rule)")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--precision", action="store_true",
                        help="also each precision recipe of sgd, momentum and adam at 2^28 "
                             "(needs torch with CUDA for bfloat16)")
    parser.add_argument("--model", action="store_true",
                        help="only Adam over GPT-2 small's 148 tensors (arena, list, "
                             "fusedopt.torch, torch fused)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    args.sizes = [int(e) for e in args.sizes.split(",")]
    args.rules = args.rules.split(",") if args.rules else None
    return run(args)


def run(args) -> int:
    """The benchmark for ``args`` (``sizes``: powers of two; ``rules``: names or None for
    every rule; ``repeats``; ``model``, ``precision``, ``json``: flags; ``out``: a folder
    for ``gpu_bench.json``, or empty). ``fusedopt bench --backend cupy`` and the
    repository script share it."""
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no CuPy, no driver or no device
        print(f"fusedopt bench --backend cupy needs CuPy and a CUDA GPU: {exc}",
              file=sys.stderr)
        return 2

    import fusedopt as fo

    try:
        import torch

        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    device = cupy.cuda.runtime.getDeviceProperties(0)
    name = device["name"].decode() if isinstance(device["name"], bytes) else device["name"]
    rows = []
    for rule in ([] if args.model else args.rules or rules_timed()):
        for exponent in args.sizes:
            rows.extend(bench_rule(cupy, torch, fo, rule, 1 << exponent, args.repeats))
            print(f"{rule} 2^{exponent} done", file=sys.stderr, flush=True)
    model = bench_model(cupy, torch, fo, args.repeats)
    from fusedopt import bench_precision_gpu

    precision = []
    if args.precision and torch is not None:
        for rule in ("sgd", "momentum", "adam"):
            precision.extend(bench_precision_gpu.run_gpu(rule, 1 << 28, args.repeats))
            print(f"{rule} precision recipes done", file=sys.stderr, flush=True)
    result = dict(device=name, cupy=cupy.__version__, fusedopt=fo.__version__,
                  torch=None if torch is None else torch.__version__, results=rows,
                  model=model, precision=precision)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
            json.dump(result, f, indent=2)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        return 0
    print(f"GPU: {name}; fp32; medians of {args.repeats} CUDA-event timings after warm-up")
    if rows:
        print(table(rows))
    print(model_table(model))
    if precision:
        print("Precision recipes at 2^28 (torch CUDA tensors; fraction of a copy of the same "
              "bytes; speedup vs the fp32 recipe):")
    for r in precision:
        fraction = "-" if r["fraction_of_copy_bw"] is None else f"{r['fraction_of_copy_bw']:.2f}"
        print(f"  {r['rule']:<9}{r['recipe']:<36}{r['median_s'] * 1e3:>8.3f} ms  "
              f"copy {fraction:>5}  speedup {r['speedup_vs_fp32']:.2f}x")
    return 0


