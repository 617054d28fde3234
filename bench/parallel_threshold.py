"""Find the size from which the Numba prange driver beats the serial one (fp32 Adam).

    python bench/parallel_threshold.py

Prints both times per size and the crossover; the result goes into
``fusedopt/config.py`` (``NUMBA_PARALLEL_MIN_SIZE``).
"""

from __future__ import annotations

import timeit

import numpy as np

from fusedopt.backends import numba_cpu
from fusedopt.kernels import RULES


def main() -> None:
    module = numba_cpu.drivers()
    rule = RULES["adam"]
    crossover = None
    for exponent in range(10, 22):
        n = 1 << exponent
        arrays = [np.random.default_rng(0).random(n, dtype=np.float32) for _ in rule.arrays]
        scalars = np.full(len(rule.scalars), 0.5, np.float32)
        times = {}
        for kind in ("serial", "parallel"):
            driver = getattr(module, f"adam_{kind}")
            driver(*arrays, scalars)
            number = max(1, 200_000 // n)
            best = min(timeit.repeat(lambda d=driver, a=arrays, s=scalars: d(*a, s),
                                     number=number, repeat=7))
            times[kind] = best / number
        faster = "parallel" if times["parallel"] < times["serial"] else "serial"
        if faster == "parallel" and crossover is None:
            crossover = n
        print(f"2^{exponent:<3} serial {times['serial'] * 1e6:9.2f} us   "
              f"parallel {times['parallel'] * 1e6:9.2f} us   {faster}")
    print(f"crossover: NUMBA_PARALLEL_MIN_SIZE = {crossover}")


if __name__ == "__main__":
    main()
