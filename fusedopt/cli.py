"""The ``fusedopt`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from fusedopt import config
from fusedopt._version import __version__
from fusedopt.cli_args import (
    _batch_size,
    _int_list,
    _layers,
    _non_negative_float,
    _positive_float,
    _positive_int,
    memory_size,
)


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
    from fusedopt import distributed

    engines = distributed.available()
    print("several processes: MPI " + ("available (mpi4py)" if engines["mpi"] else
                                       "not installed (pip install 'fusedopt[mpi]')")
          + ", NCCL " + ("available (CuPy + nvidia-nccl)" if engines["nccl"] else
                         "not installed (pip install 'fusedopt[nccl]')")
          + ("; started by an MPI launcher" if distributed.launched() else ""))
    found, why = devices.gpus()
    if not found:
        print(f"gpu: none ({why})")
    for gpu in found:
        print(f"gpu {gpu.index}: {gpu.name} (sm_{gpu.compute_capability}), "
              f"{_gib(gpu.free_bytes)} free of {_gib(gpu.total_bytes)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Time the fused update against the floor, the NumPy reference and torch."""
    from fusedopt import bench

    if args.precision is not None:
        from fusedopt.cli_bench import bench_precision

        return bench_precision(args)
    if args.distributed:
        from fusedopt.cli_bench import bench_distributed

        return bench_distributed(args)
    if args.per_call:
        from fusedopt.cli_bench import bench_per_call

        return bench_per_call(args)
    if args.backend == "cupy":
        from fusedopt.cli_bench import bench_gpu

        return bench_gpu(args)
    if args.model:
        key, rows = "model", bench.measure_model(min_repeats=args.repeats,
                                                 min_seconds=args.seconds)
        table = bench.format_model_table(rows)
        legend = ("arena: fo.Adam over a ParamArena (one launch); list: fo.Adam over the 157 "
                  "arrays (one call); arena_clip_nonfinite: with max_grad_norm and "
                  "nonfinite='skip'; arena_clip_capturable: the same on the device "
                  "(capturable=True, no host read); floor: one pass moving Adam's 7 streams "
                  "with no math; fusedopt_torch(_capturable): fusedopt.torch.Adam "
                  "(capturable=True).")
    else:
        progress = (lambda msg: print(msg, file=sys.stderr)) if not args.json else None
        key, rows = "results", bench.ratios(bench.run(
            rules=args.rules, sizes=args.sizes, impls=args.impls, min_repeats=args.repeats,
            min_seconds=args.seconds, progress=progress))
        table = bench.format_table(rows)
        legend = ("x floor: time / the floor's time (1.00 = memory-bound at this machine's "
                  "bandwidth); x faster than ref: the NumPy reference's time / this time; "
                  "x torch fused: time / torch.optim's fused step (< 1 is faster).")
    if args.json:
        json.dump({"fusedopt": __version__, key: rows}, sys.stdout, indent=2)
        print()
    else:
        print(table)
        print("\n" + legend)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """The batch-size plan for a training set described by its sizes."""
    import numpy as np

    from fusedopt.train.planner import plan_batch_size

    n_x = args.n_x if args.n_x is not None else args.layers[0]
    if args.layers[0] != n_x:
        print(f"fusedopt plan: error: --layers starts with {args.layers[0]} but --n-x is {n_x}",
              file=sys.stderr)
        return 2
    dtype = np.dtype(args.dtype)
    def plan_for(precision: str):
        return plan_batch_size(((n_x, args.m), dtype), ((args.layers[-1], args.m), dtype),
                               layer_sizes=args.layers, optimizer=args.optimizer,
                               memory_limit=args.memory, backend=args.backend, dtype=dtype,
                               precision=precision)

    plan = plan_for(args.precision)
    if args.json:
        from dataclasses import asdict

        json.dump(asdict(plan), sys.stdout, indent=2)
        print()
    else:
        print(plan.table())
        if args.precision != "fp32":
            from fusedopt.train.memory_model import mlp_shapes, parameter_bytes

            shapes = mlp_shapes(args.layers)
            ours = sum(parameter_bytes(shapes, dtype, args.optimizer, precision=args.precision)
                       .values())
            fp32 = sum(parameter_bytes(shapes, dtype, args.optimizer).values())
            print(f"{args.precision}: parameters, gradients and state take {ours:,} bytes, "
                  f"{fp32 - ours:+,} against fp32 ({fp32:,}); the largest batch that fits: "
                  f"{plan.max_fitting_batch_size} (fp32: "
                  f"{plan_for('fp32').max_fitting_batch_size})")
    return 0 if plan.fits else 1


def cmd_profile(args: argparse.Namespace) -> int:
    """Train the MLP on the digits at several batch sizes and recommend one."""
    from fusedopt.train.datasets import load_digits
    from fusedopt.train.profile import profile_batch_sizes

    data = load_digits()
    X, Y = data.X_train, data.Y_train
    layers = args.layers or [X.shape[0], 64, Y.shape[0]]
    if layers[0] != X.shape[0] or layers[-1] != Y.shape[0]:
        print(f"fusedopt profile: error: --layers must start with {X.shape[0]} and end with "
              f"{Y.shape[0]} for the digits", file=sys.stderr)
        return 2
    if args.backend == "cupy":
        import cupy

        X, Y = cupy.asarray(X), cupy.asarray(Y)
    profile = profile_batch_sizes(X, Y, sizes=args.sizes, layer_sizes=layers,
                                  optimizer=args.optimizer, lr=args.lr, seconds=args.seconds,
                                  backend=args.backend, memory_limit=args.memory,
                                  out_dir=args.out, progress=not args.json,
                                  precision=args.precision)
    if args.json:
        json.dump(profile.to_json(), sys.stdout, indent=2, default=float)
        print()
    else:
        print(f"{data.name}: m = {X.shape[1]} training samples, MLP {layers}, "
              f"{args.optimizer}")
        print(profile.table())
        if profile.plan is not None:
            print("\nthe plan:\n" + profile.plan.table())
        print(f"\nwrote {args.out}/profile.json, throughput.png, cost_vs_time.png")
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line on stderr naming the flag, and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the MLP on the digits through the fused kernels; print accuracy; write plots."""
    from fusedopt import backends
    from fusedopt.train import demo

    if args.backend is not None:
        ok, why = backends.status()[args.backend]
        if not ok:
            print(f"fusedopt demo: error: backend {args.backend!r} is not available here: {why}",
                  file=sys.stderr)
            return 2
    try:
        demo.run(backend=args.backend, optimizer=args.optimizer, epochs=args.epochs,
                 batch_size=args.batch_size, out=args.out, lr=args.lr, hidden=args.hidden,
                 precision=args.precision)
    except ImportError as exc:
        print(f"fusedopt demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fusedopt import bench
    from fusedopt.kernels import optimizer_names
    from fusedopt.kernels.dtypes import RECIPES

    optimizers = sorted(optimizer_names())  # every registered optimizer, from the registry

    parser = _Parser(
        prog="fusedopt",
        description="Fused optimizer update kernels (" + ", ".join(optimizers)
                    + ") for NumPy (Numba) and CuPy.",
    )
    parser.add_argument("--version", action="version", version=f"fusedopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="train an MLP on real data (the UCI digits) through the "
                                     "fused kernels: the main job",
                       description="Plan the batch size, train fusedopt's MLP on the UCI "
                                   "digits (shipped with scikit-learn) with mini-batch "
                                   "gradient descent through the fused kernels, print the "
                                   "held-out accuracy and time, and plot the cost per "
                                   "mini-batch and the learning rate.")
    d.add_argument("--backend", choices=["numba", "numpy", "cupy"], default=None,
                   help="where to run (default: numba on the CPU)")
    d.add_argument("--optimizer", choices=optimizers, default="adam")
    d.add_argument("--epochs", type=_positive_int, default=30)
    d.add_argument("--batch-size", type=_batch_size, default=64,
                   help="samples per mini-batch, or 'plan' for the planner's choice "
                        "(default: %(default)s)")
    d.add_argument("--lr", type=_positive_float, default=None, help="initial learning rate")
    d.add_argument("--hidden", type=_positive_int, default=64, help="hidden units")
    d.add_argument("--precision", choices=["fp32", "bf16", "bf16-sr", "fp16-master"],
                   default="fp32", help="what the training keeps between steps: float32, "
                   "bfloat16 everything (nearest or stochastic rounding), or float16 "
                   "parameters with a float32 master copy (default: %(default)s)")
    d.add_argument("--out", default="fusedopt-demo", help="folder for the plots")
    d.set_defaults(func=cmd_demo)

    info = sub.add_parser("info", help="version, backends, threads, CPU memory, GPUs")
    info.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", help="time the fused updates against the bandwidth floor, "
                                     "the NumPy reference and torch.optim",
                       description="Time each rule's fused update against a floor kernel "
                                   "moving the same bytes, the unfused NumPy reference and "
                                   "torch.optim (fused and foreach, when torch is installed); "
                                   "fp32, medians of interleaved rounds in one run.")
    b.add_argument("--rules", type=lambda s: s.split(","), default=list(bench.bench_rules()),
                   help="comma-separated rules (default: %(default)s)")
    b.add_argument("--sizes", type=_int_list, default=list(config.BENCH_SIZES),
                   help="comma-separated element counts (default: %(default)s)")
    b.add_argument("--impls", type=lambda s: s.split(","), default=list(bench.IMPLS),
                   help="comma-separated implementations (default: %(default)s)")
    b.add_argument("--repeats", type=_positive_int, default=config.BENCH_MIN_REPEATS,
                   help="minimum timed rounds per case (default: %(default)s)")
    b.add_argument("--seconds", type=_non_negative_float, default=config.BENCH_MIN_SECONDS,
                   help="minimum seconds per case (default: %(default)s)")
    b.add_argument("--model", action="store_true",
                   help="instead: Adam over a 157-tensor transformer-like model (10.8M fp32 "
                        "parameters): arena vs list vs torch fused/foreach, and the cost of "
                        "clipping plus the non-finite check")
    b.add_argument("--precision", nargs="?", const="all", default=None,
                   help="instead: each precision recipe (fp32, bf16-params, fp32-master, bf16, "
                        "bf16-sr; comma-separated, or all) of sgd, momentum and adam at 16M "
                        "elements (or --sizes), against a loop moving the same bytes and a "
                        "plain Numba loop doing the same math; needs ml_dtypes for bfloat16")
    b.add_argument("--backend", choices=["numba", "cupy"], default="numba",
                   help="cupy: the GPU benchmark (each rule at 2^20, 2^24, 2^28 against a "
                        "device copy and torch fused; with --model, Adam over GPT-2 small's "
                        "148 tensors: arena, list, fusedopt.torch, torch fused; with "
                        "--precision, the recipes at 2^28 on torch CUDA tensors)")
    b.add_argument("--distributed", action="store_true",
                   help="under mpiexec: data-parallel and ZeRO-1 steps against one process, "
                        "with the bytes each rank sends and the state it holds")
    b.add_argument("--per-call", action="store_true",
                   help="instead: what one fo.<rule>_ call on 4096 elements (or --sizes) costs "
                        "against its kernel called directly (adam and sgd, or --rules; with "
                        "--backend cupy, host time per call on the GPU)")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    b.set_defaults(func=cmd_bench)

    p = sub.add_parser("plan", help="which mini-batch size fits in memory (nothing allocated)",
                       description="Plan the mini-batch size for an MLP on a training set "
                                   "described by its sizes, by the lecture's rules, against "
                                   "the memory this process can use (container limits "
                                   "included) or --memory. Exit status 1 if nothing fits.")
    p.add_argument("--m", type=_positive_int, required=True, help="training samples")
    p.add_argument("--n-x", type=_positive_int, default=None,
                   help="input features (default: the first of --layers)")
    p.add_argument("--layers", type=_layers, required=True, help="MLP sizes, e.g. 784,256,10")
    p.add_argument("--optimizer", choices=optimizers, default="adam")
    p.add_argument("--precision", choices=list(RECIPES), default="fp32",
                   help="the storage of parameters, gradients and state (and a float32 master "
                        "copy): %(choices)s (default: %(default)s)")
    p.add_argument("--memory", type=memory_size, default=None,
                   help="plan for this much memory (e.g. 8GiB) instead of what is free")
    p.add_argument("--backend", choices=["numba", "numpy", "cupy"], default=None,
                   help="cupy: plan for the GPU (default: the CPU)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_plan)

    r = sub.add_parser("profile", help="train at several batch sizes and recommend the fastest",
                       description="Train fusedopt's MLP on the UCI digits (shipped with "
                                   "scikit-learn) at several mini-batch sizes, measure "
                                   "throughput and how fast the cost falls, estimate the "
                                   "gradient noise scale, and write a table and plots.")
    r.add_argument("--sizes", type=_int_list, default=None,
                   help="batch sizes (default: 32,64,...,1024 and the full batch)")
    r.add_argument("--layers", type=_layers, default=None, help="MLP sizes (default 64,64,10)")
    r.add_argument("--optimizer", choices=optimizers, default="adam")
    r.add_argument("--precision", choices=["fp32", "bf16", "bf16-sr", "fp16-master"],
                   default="fp32", help="what the training keeps between steps (see fusedopt "
                   "demo --help; default: %(default)s)")
    r.add_argument("--lr", type=_positive_float, default=1e-2)
    r.add_argument("--seconds", type=_positive_float, default=2.0,
                   help="the most training time per batch size (default: %(default)s)")
    r.add_argument("--memory", type=memory_size, default=None,
                   help="skip sizes the planner predicts above this much memory")
    r.add_argument("--backend", choices=["numba", "cupy"], default=None)
    r.add_argument("--out", default="fusedopt-profile", help="folder for the JSON and plots")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(func=cmd_profile)
    return parser


_SIZE_FLAGS = {"bench": "--sizes", "profile": "--layers or --sizes", "demo": "--layers",
               "plan": "--m or --layers"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "bench":
        from fusedopt import bench

        bad_rules = [r for r in args.rules if r not in bench.bench_rules()]
        bad_impls = [i for i in args.impls if i not in bench.IMPLS]
        if bad_rules or bad_impls:
            what = (f"--rules {','.join(bad_rules)}: choose from {','.join(bench.bench_rules())}"
                    if bad_rules else
                    f"--impls {','.join(bad_impls)}: choose from {','.join(bench.IMPLS)}")
            parser.error(what)
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:  # the library's named errors: one line, status 2
        print(f"fusedopt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # an allocation the sizes asked for: nothing was written
        print(f"fusedopt {args.command}: error: out of memory ({exc}); use smaller "
              f"{_SIZE_FLAGS.get(args.command, 'sizes')}", file=sys.stderr)
        return 2


def run() -> int:
    """The console script: ``main`` with a quiet exit when the output pipe closes (``| head``)."""
    try:
        return main()
    except BrokenPipeError:
        sys.stderr.close()  # nothing more can be written; exit without a traceback
        return 1


if __name__ == "__main__":
    sys.exit(run())
