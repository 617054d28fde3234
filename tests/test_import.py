"""``import fusedopt`` is light: no CuPy, no torch, not even Numba until the first CPU update."""

from __future__ import annotations

import subprocess
import sys


def test_import_pulls_in_neither_cupy_nor_torch():
    code = (
        "import sys, fusedopt as fo\n"
        "heavy = sorted(m for m in ('cupy', 'torch', 'numba') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(filter(None, out.stdout.strip().split(",")))
    assert "cupy" not in loaded and "torch" not in loaded, loaded


def test_numba_is_imported_only_when_needed():
    code = "import sys, fusedopt\nprint('numba' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_backend_modules_are_reachable_as_attributes_without_importing_cupy():
    code = ("import sys, fusedopt as fo\n"
            "src = fo.backends.cupy_cuda.cuda_source('adam', 'float32')\n"
            "print('extern \"C\" __global__' in src, 'cupy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_mpi_is_imported_only_by_a_launched_init():
    code = ("import sys, fusedopt as fo\n"
            "before = 'mpi4py' in sys.modules\n"
            "comm = fo.distributed.init()  # no launcher here: the world of one\n"
            "print(before, 'mpi4py' in sys.modules, comm.size, 'cupy' in sys.modules)\n")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                        "MPI_LOCALNRANKS", "SLURM_NTASKS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.split() == ["False", "False", "1", "False"]
