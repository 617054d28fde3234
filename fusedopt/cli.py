"""The ``fusedopt`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from fusedopt import config
from fusedopt._version import __version__


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def cmd_info(args: argparse.Namespace) -> int:
    """Version, backends (and why one is not available), threads, memory, GPUs."""
    import numba
    import numpy as np

    from fusedopt import backends, devices

    print(f"fusedopt {__version__} (Python {sys.version.split()[0]}, NumPy {np.__version__}, "
          f"Numba {numba.__version__})")
    print("backends:")
    for name, (ok, why) in backends.status().items():
        print(f"  {name:<6} {'available' if ok else 'unavailable'}: {why}")
    print(f"numba threads: {numba.get_num_threads()} (parallel driver from "
          f"{config.NUMBA_PARALLEL_MIN_SIZE} elements)")
    mem = devices.cpu_memory()
    print(f"cpu memory: {_gib(mem.available_bytes)} available of {_gib(mem.total_bytes)} "
          f"(from {mem.source})")
    found, why = devices.gpus()
    if not found:
        print(f"gpu: none ({why})")
    for gpu in found:
        print(f"gpu {gpu.index}: {gpu.name} (sm_{gpu.compute_capability}), "
              f"{_gib(gpu.free_bytes)} free of {_gib(gpu.total_bytes)}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(float(x)) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of sizes") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive integers, e.g. 4096,1048576")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    """Time the fused update against the floor, the NumPy reference and torch."""
    from fusedopt import bench

    if args.model:
        rows = bench.measure_model(min_repeats=args.repeats, min_seconds=args.seconds)
        if args.json:
            json.dump({"fusedopt": __version__, "model": rows}, sys.stdout, indent=2)
            print()
        else:
            print(bench.format_model_table(rows))
            print("\narena: fo.Adam over a ParamArena (one launch); list: fo.Adam over the 157 "
                  "arrays (one launch each); arena_clip_nonfinite: with max_grad_norm and "
                  "nonfinite='skip'; floor: one pass moving Adam's 7 streams with no math.")
        return 0
    progress = (lambda msg: print(msg, file=sys.stderr)) if not args.json else None
    results = bench.run(rules=args.rules, sizes=args.sizes, impls=args.impls,
                        min_repeats=args.repeats, min_seconds=args.seconds, progress=progress)
    rows = bench.ratios(results)
    if args.json:
        json.dump({"fusedopt": __version__, "results": rows}, sys.stdout, indent=2)
        print()
    else:
        print(bench.format_table(rows))
        print("\nx floor: time / the floor's time (1.00 = memory-bound at this machine's "
              "bandwidth); x faster than ref: the NumPy reference's time / this time; "
              "x torch fused: time / torch.optim's fused step (< 1 is faster).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fusedopt import bench

    parser = argparse.ArgumentParser(
        prog="fusedopt",
        description="Fused optimizer update kernels (SGD, Momentum, RMSprop, Adam) for NumPy "
                    "(Numba) and CuPy.",
    )
    parser.add_argument("--version", action="version", version=f"fusedopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="version, backends, threads, CPU memory, GPUs")
    info.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", help="time the fused updates against the bandwidth floor, "
                                     "the NumPy reference and torch.optim",
                       description="Time each rule's fused update against a floor kernel "
                                   "moving the same bytes, the unfused NumPy reference and "
                                   "torch.optim (fused and foreach, when torch is installed); "
                                   "fp32, medians of interleaved rounds in one run.")
    b.add_argument("--rules", type=lambda s: s.split(","), default=list(bench.BENCH_RULES),
                   help="comma-separated rules (default: %(default)s)")
    b.add_argument("--sizes", type=_int_list, default=list(config.BENCH_SIZES),
                   help="comma-separated element counts (default: %(default)s)")
    b.add_argument("--impls", type=lambda s: s.split(","), default=list(bench.IMPLS),
                   help="comma-separated implementations (default: %(default)s)")
    b.add_argument("--repeats", type=int, default=config.BENCH_MIN_REPEATS,
                   help="minimum timed rounds per case (default: %(default)s)")
    b.add_argument("--seconds", type=float, default=config.BENCH_MIN_SECONDS,
                   help="minimum seconds per case (default: %(default)s)")
    b.add_argument("--model", action="store_true",
                   help="instead: Adam over a 157-tensor transformer-like model (10.8M fp32 "
                        "parameters): arena vs list vs torch fused/foreach, and the cost of "
                        "clipping plus the non-finite check")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    b.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "bench":
        from fusedopt import bench
        from fusedopt.kernels.rules import RULES

        bad_rules = [r for r in args.rules if r not in bench.BENCH_RULES or r not in RULES]
        bad_impls = [i for i in args.impls if i not in bench.IMPLS]
        if bad_rules or bad_impls:
            what = (f"--rules {','.join(bad_rules)}: choose from {','.join(bench.BENCH_RULES)}"
                    if bad_rules else
                    f"--impls {','.join(bad_impls)}: choose from {','.join(bench.IMPLS)}")
            parser.error(what)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
