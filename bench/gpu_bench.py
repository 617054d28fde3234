"""The GPU benchmark, from the repository: a thin caller of ``fusedopt.bench_gpu``
(``fusedopt bench --backend cupy`` runs the same code from an installed package).

    PYTHONPATH=. python3 bench/gpu_bench.py --out OUT_DIR [--sizes 20,24,28] [--repeats 25]
"""

from __future__ import annotations

import sys

from fusedopt.bench_gpu import main

if __name__ == "__main__":
    sys.exit(main())
