"""``fusedopt bench``'s other modes: the GPU benchmark and the precision recipes."""

from __future__ import annotations

import argparse
import json
import sys

from fusedopt import config
from fusedopt._version import __version__


def bench_gpu(args: argparse.Namespace) -> int:
    """``fusedopt bench --backend cupy``: the GPU benchmark of :mod:`fusedopt.bench_gpu`."""
    from fusedopt import bench_gpu

    sizes = args.sizes
    if sizes == list(config.BENCH_SIZES):  # the CPU's defaults: the GPU's are larger
        sizes = [1 << 20, 1 << 24, 1 << 28]
    odd = [n for n in sizes if n & (n - 1)]
    if odd:
        raise ValueError(f"--sizes {','.join(map(str, odd))}: with --backend cupy, sizes are "
                         "powers of two (e.g. 1048576,16777216)")
    from fusedopt.bench import bench_rules

    rules = None if args.rules == list(bench_rules()) else args.rules
    return bench_gpu.run(argparse.Namespace(
        sizes=[n.bit_length() - 1 for n in sizes], rules=rules, repeats=max(args.repeats, 5),
        model=args.model, precision=False, json=args.json, out=""))


def bench_precision(args: argparse.Namespace) -> int:
    from fusedopt import bench_precision, bench_precision_gpu

    recipes = (list(bench_precision.RECIPES) if args.precision == "all"
               else args.precision.split(","))
    bad = [r for r in recipes if r not in bench_precision.RECIPES]
    if bad:
        raise ValueError(f"--precision {','.join(bad)}: choose from "
                         f"{','.join(bench_precision.RECIPES)} or all")
    rules = [r for r in args.rules if r in bench_precision.RULE_NAMES]
    if not rules:
        raise ValueError(f"--rules: --precision measures {','.join(bench_precision.RULE_NAMES)}")
    sizes = [2**24] if args.sizes == list(config.BENCH_SIZES) else args.sizes
    if args.backend == "cupy":  # on the GPU, through torch CUDA tensors
        rows = [row for rule in rules for n in ([2**28] if sizes == [2**24] else sizes)
                for row in bench_precision_gpu.run_gpu(rule, n, max(args.repeats, 5), recipes)]
        if args.json:
            json.dump({"fusedopt": __version__, "precision_gpu": rows}, sys.stdout, indent=2)
            print()
        else:
            print(bench_precision_gpu.format_gpu_table(rows))
        return 0
    progress = (lambda msg: print(msg, file=sys.stderr)) if not args.json else None
    results = []
    for n in sizes:
        results += bench_precision.run(rules=rules, recipes=recipes, n=n,
                                       repeats=max(args.repeats, 5), progress=progress)
    table = bench_precision.rows(results)
    if args.json:
        json.dump({"fusedopt": __version__, "precision": table}, sys.stdout, indent=2)
        print()
        return 0
    print(bench_precision.format_table(table))
    print("\nx math floor: time / a plain Numba loop doing the same math on the same storage; "
          "x bytes floor: time / a loop moving the same bytes; speedup vs fp32: the fp32 "
          "recipe's time / this time (medians, one run).")
    return 0



def bench_per_call(args: argparse.Namespace) -> int:
    """``fusedopt bench --per-call``: :mod:`fusedopt.bench_overhead`."""
    from fusedopt import bench_overhead
    from fusedopt.bench import bench_rules

    rules = ["adam", "sgd"] if args.rules == list(bench_rules()) else args.rules
    sizes = [4096] if args.sizes == list(config.BENCH_SIZES) else args.sizes
    rows = [row for n in sizes for row in bench_overhead.measure(
        rules, n, args.backend, min_repeats=args.repeats, min_seconds=args.seconds)]
    if args.json:
        json.dump({"fusedopt": __version__, "per_call": rows}, sys.stdout, indent=2)
        print()
    else:
        print(bench_overhead.format_table(rows))
        print("\nfo.<rule>_: the whole call (checks, scalars, launch); kernel: the compiled "
              "kernel called directly with prepared scalars; x kernel: their ratio.")
    return 0


def bench_distributed(args: argparse.Namespace) -> int:
    """``fusedopt bench --distributed`` (under mpiexec): :mod:`fusedopt.bench_distributed`."""
    from fusedopt import bench_distributed, distributed

    comm = distributed.init()
    rows = bench_distributed.measure(comm, min_repeats=args.repeats)
    if comm.rank != 0:
        return 0
    if args.json:
        json.dump({"fusedopt": __version__, "world_size": comm.size, "distributed": rows},
                  sys.stdout, indent=2)
        print()
    else:
        print(f"Adam over 157 tensors, {rows[0]['parameters']:,} float32 parameters, "
              f"{comm.size} rank(s)")
        print(bench_distributed.format_table(rows))
        print("\nsingle: one process; data-parallel: all-reduce, then every rank updates "
              "everything; ZeRO-1: reduce-scatter, 1/W of the update, all-gather. sent/rank: "
              "the ring algorithms' bytes; state/rank: optimizer state and summed-gradient "
              "block held.")
    return 0
