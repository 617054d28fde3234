"""Tunables, in one place (measured on the machines named beside each value).

Change a value here, not in the modules that read it.
"""

from __future__ import annotations

import os
import warnings


def _env_int(name: str, default: int, lo: int = 1, hi: int = 2**62) -> int:
    """An integer from the environment variable ``name``; a bad value warns (naming the
    variable) and keeps ``default``, so a typo never breaks ``import fusedopt``."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip(), 0)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        warnings.warn(f"fusedopt: ignoring {name}={raw!r} (expected an integer from {lo} to "
                      f"{hi}); using {default}", RuntimeWarning, stacklevel=2)
        return default
    return value


def _env_path(name: str, default: str) -> str:
    """A path from the environment; unset or empty means ``default`` (an empty value must not
    mean the current directory)."""
    raw = os.environ.get(name, "")
    return raw if raw.strip() else default

#: Arrays with at least this many elements run the Numba ``prange`` driver;
#: smaller ones run the serial driver, where starting the worker threads costs
#: more than the work. Measured with ``python bench/parallel_threshold.py`` on a
#: 2-core AVX-512 machine (fp32 Adam): serial 2.8 us vs parallel 3.3 us at 2^14,
#: 5.2 us vs 4.9 us at 2^15, so the parallel driver starts at 2^15.
#: Override with the environment variable ``FUSEDOPT_PARALLEL_MIN_SIZE``.
NUMBA_PARALLEL_MIN_SIZE: int = _env_int("FUSEDOPT_PARALLEL_MIN_SIZE", 1 << 15, lo=0)
#: A list of tensors in one call is cut into chunks of at most this many elements, which
#: the threads share out (a large tensor is split, small ones stay whole); the tables of
#: the last few address sets are kept, so a training loop's list is checked once.
MULTI_TENSOR_CHUNK: int = 1 << 16
#: ``fo.<rule>_`` keeps the prepared scalars of this many (rule, dtypes, hyperparameters)
PREPARED_CACHE: int = 64
MULTI_TENSOR_TABLES: int = 32

#: Where generated Numba driver modules (and Numba's on-disk cache of their
#: machine code) are kept, so that the JIT compile is paid once per machine.
CACHE_DIR: str = _env_path(
    "FUSEDOPT_CACHE_DIR",
    os.path.join(_env_path("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fusedopt"),
)

#: Benchmark defaults for ``fusedopt bench``: sizes (fp32 elements) and repeats.
BENCH_SIZES: tuple[int, ...] = (4096, 1 << 20, 1 << 24)
BENCH_MIN_REPEATS: int = 7
BENCH_MIN_SECONDS: float = 0.3

#: CUDA launch shape for the CuPy backend: threads per block, and blocks per
#: multiprocessor before the grid-stride loop takes over (enough resident warps
#: to hide memory latency on a memory-bound kernel).
CUDA_THREADS_PER_BLOCK: int = _env_int("FUSEDOPT_CUDA_THREADS", 256, lo=32, hi=1024)
CUDA_BLOCKS_PER_SM: int = _env_int("FUSEDOPT_CUDA_BLOCKS_PER_SM", 8, lo=1, hi=64)

#: Use the 128-bit (float4/double2) kernel when every array is 16-byte aligned.
#: ``FUSEDOPT_CUDA_VECTOR_LOADS=0`` forces the one-element kernel (for comparison).
CUDA_VECTOR_LOADS: bool = os.environ.get("FUSEDOPT_CUDA_VECTOR_LOADS", "1") != "0"

#: The batch-size planner keeps this fraction of the available memory free as a
#: margin (allocator fragmentation, library workspaces, the rest of the process).
PLANNER_MARGIN_FRACTION: float = 0.10
#: On a GPU, also this many bytes (the CUDA context, cuBLAS workspaces, CuPy's pool slack).
PLANNER_GPU_OVERHEAD_BYTES: int = 256 * 2**20
#: On the CPU, the training loop's own Python and NumPy bookkeeping (the optimizer's and
#: the MLP's objects, array views, the epoch's random generator, the generator of
#: mini-batches, NumPy's reduction buffers), which only small models feel: fitted with
#: tracemalloc over the library's loop (Python 3.11, NumPy 2.4; 1 to 7 layers, every
#: optimizer, both dtypes, b from 1 to 128) as about 12 KiB + 0.5 KiB per tensor + 48 B per
#: tensor and state slot, and 8 KiB more with many mini-batches an epoch; within about
#: 6 KiB, so the planner's promise for loops under 128 KiB is absolute (12 KiB). 2.5 KiB
#: more since an optimizer keeps its step's launch layout and checked arrays
#: (:mod:`fusedopt.optim.launches`), measured the same way.
PLANNER_LOOP_OVERHEAD_BYTES: int = 14 * 1024 + 512
PLANNER_TENSOR_OVERHEAD_BYTES: int = 512
PLANNER_STATE_OVERHEAD_BYTES: int = 48
#: ... and this much more when an epoch has eight mini-batches or more.
PLANNER_BATCH_OVERHEAD_BYTES: int = 8 * 1024
#: The profiler keeps at most this many (seconds, cost) points of each probe's training
#: curve (a quarter as many of its evaluations), in preallocated float64 arrays.
PROFILER_CURVE_POINTS: int = 1024
#: What a probe holds besides the training loop itself: those records (and small objects).
PROFILER_RECORD_BYTES: int = (PROFILER_CURVE_POINTS * 16  # (seconds, cost) of each step
                              + PROFILER_CURVE_POINTS // 4 * 16  # of each evaluation
                              + PROFILER_CURVE_POINTS * 8  # the latest step times
                              + 4096)  # the probe's small objects
#: Each batch size's step is timed in this many rounds, interleaved with the other sizes;
#: sizes whose times to the target cost are within this fraction of the fastest are a tie,
#: which the larger batch wins (more throughput, fewer steps). The fraction is the
#: measurement's resolution on a shared machine: the step that reaches the target is known
#: to 5%, and the median step time moved by up to 15% between runs on the CI machine.
PROFILER_REPEATS: int = 15
PROFILER_TIE_FRACTION: float = 0.20
#: Between runs, not within one, the machine moves more: on the CI machine the digits'
#: 512 measured 1.26x to 1.78x the fastest and 256 up to 1.2x+, as the share of the step
#: spent in matrix products drifted. A size slower than the fastest by more than the tie
#: but less than this is within that drift; it still ties when it needs at least
#: ``PROFILER_STEP_SAVING`` fewer steps than the largest smaller tied size (a real gain,
#: fixed by the seeds), so the answer does not hang on the drift.
PROFILER_DRIFT_FRACTION: float = 0.40
PROFILER_STEP_SAVING: float = 0.20
#: The lecture's rules: full batch up to this many samples; otherwise a power of two in range.
FULL_BATCH_MAX_SAMPLES: int = 2000
MINIBATCH_SIZES: tuple[int, ...] = (64, 128, 256, 512)
