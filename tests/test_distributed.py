"""Data-parallel and ZeRO-1 training under ``mpiexec``, against one process.

The oracle is the same optimizer in one process, stepped on the average of the ranks'
gradients (rebuilt here from the script's seeds). With 2 ranks the sums are the
one-process sums bit for bit; with 3, MPI sums in another order, so within 1e-6.
Each run is a subprocess with a timeout, under ``python -m mpi4py`` (a rank that
raises aborts the job instead of leaving the others in a collective).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusedopt as fo

pytest.importorskip("mpi4py", reason="the MPI tests need mpi4py (pip install 'fusedopt[mpi]')")
MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
if not os.path.exists(MPIEXEC):
    pytest.skip("no mpiexec (pip install mpich)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent / "mpi"))
import train  # noqa: E402  (tests/mpi/train.py: the script each rank runs)

SCRIPT = Path(__file__).parent / "mpi" / "train.py"
ROOT = Path(__file__).parent.parent


def mpirun(ranks: int, *args, timeout: float = 120, check: bool = True):
    env = dict(os.environ, NUMBA_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py",
                           str(SCRIPT), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def result(out: Path, precision: str = "fp32") -> list[np.ndarray]:
    dtype, _ = train.options(precision)
    with np.load(out / "params.npz") as saved:
        return [saved[f"arr_{k}"].view(dtype).reshape(s)
                for k, s in enumerate(train.SHAPES)]


def one_process(ranks: int, steps: int, precision: str = "fp32", first: int = 1,
                resume: str | None = None) -> list[np.ndarray]:
    """The oracle: one process, one optimizer, the mean of the ranks' gradients."""
    dtype, extra = train.options(precision)
    arena = fo.ParamArena(train.initial(dtype))
    opt = fo.Adam(arena, lr=0.01, max_grad_norm=2.0, **extra)
    if resume:
        fo.load(resume, opt)
    same = precision != "fp32"
    for step in range(first, first + steps):
        per_rank = [train.gradients(step, r, np.float32, same) for r in range(ranks)]
        for k, view in enumerate(arena.grads):
            view[...] = (sum(g[k] for g in per_rank) / ranks).astype(dtype)
        opt.step()
    return [np.asarray(p) for p in arena.params]


def assert_params(got, want, exact: bool):
    for a, b in zip(got, want, strict=True):
        if exact:
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
        else:
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-6,
                                       atol=1e-6)


@pytest.mark.parametrize("mode", ["dp", "zero"])
def test_two_ranks_train_exactly_as_one_process(tmp_path, mode):
    mpirun(2, tmp_path, mode, 6)
    assert_params(result(tmp_path), one_process(2, 6), exact=True)


@pytest.mark.parametrize("mode", ["dp", "zero"])
def test_every_optimizer_on_two_ranks_is_bit_identical_to_one_process(tmp_path, mode):
    from fusedopt.kernels import optimizer_names

    mpirun(2, tmp_path, mode, 4, "--every-optimizer")
    with np.load(tmp_path / "every.npz") as saved:
        got = {k: saved[k] for k in saved.files}
    assert {k.split(".")[0] for k in got} == set(optimizer_names())
    for name in sorted(optimizer_names()):
        arena = fo.ParamArena(train.initial(np.float32))
        opt = fo.make_optimizer(name, arena, max_grad_norm=2.0)
        for step in range(1, 5):
            per_rank = [train.gradients(step, r, np.float32, False) for r in range(2)]
            for k, view in enumerate(arena.grads):
                view[...] = (per_rank[0][k] + per_rank[1][k]) / 2
            opt.step()
        for k, p in enumerate(arena.params):
            np.testing.assert_array_equal(got[f"{name}.{k}"], p, err_msg=f"{name} {mode}")


def test_three_ranks_with_a_tail_train_as_one_process(tmp_path):
    # 41 elements over 3 ranks: blocks of 13, 13 and 13 + a tail of 2 on the last rank
    # (its own collectives), cutting tensors in two; 2 ranks: 20 and 20 + 1
    mpirun(3, tmp_path, "zero", 6)
    assert_params(result(tmp_path), one_process(3, 6), exact=False)


def test_bf16_master_weights_and_stochastic_rounding_do_not_depend_on_the_shards(tmp_path):
    pytest.importorskip("ml_dtypes", reason="bfloat16 NumPy arrays need ml_dtypes")
    mpirun(2, tmp_path, "zero", 5, "--precision", "bf16")
    assert_params(result(tmp_path, "bf16"), one_process(2, 5, "bf16"), exact=True)


def test_a_checkpoint_saved_on_two_ranks_resumes_on_one_and_on_three(tmp_path):
    saved = tmp_path / "ck.npz"
    (tmp_path / "two").mkdir()
    mpirun(2, tmp_path / "two", "zero", 6, "--save", saved, "--save-at", 3)
    unbroken = one_process(2, 6)
    assert_params(result(tmp_path / "two"), unbroken, exact=True)
    # the file is an unsharded optimizer's: it loads with no MPI at all, and goes on
    resumed = one_process(2, 3, first=4, resume=str(saved))
    assert_params(resumed, unbroken, exact=True)
    (tmp_path / "three").mkdir()
    mpirun(3, tmp_path / "three", "zero", 3, "--first", 4, "--resume", saved)
    # steps 4..6 on 3 ranks average 3 ranks' gradients: the oracle does the same
    want = one_process(3, 3, first=4, resume=str(saved))
    assert_params(result(tmp_path / "three"), want, exact=False)


def test_a_rank_that_raises_ends_the_whole_job(tmp_path):
    done = mpirun(2, tmp_path, "zero", 3, "--fail-rank", 1, check=False, timeout=60)
    assert done.returncode != 0
    assert "fails on purpose" in done.stdout + done.stderr


def test_a_failed_save_is_raised_on_every_rank_and_keeps_the_old_file(tmp_path):
    saved = tmp_path / "ck.npz"
    mpirun(2, tmp_path, "zero", 2, "--save", saved, "--save-at", 1)
    before = saved.read_bytes()
    done = mpirun(2, tmp_path, "zero", 2, "--save", tmp_path / "missing" / "ck.npz",
                  "--save-at", 1, check=False)
    assert done.returncode != 0 and "could not write" in done.stdout + done.stderr
    assert saved.read_bytes() == before


@pytest.mark.parametrize("precision", ["fp32", "bf16-sr"])
def test_the_demo_trains_data_parallel_to_the_single_process_accuracy(tmp_path, precision):
    import re

    from fusedopt.train import demo

    if precision != "fp32":
        pytest.importorskip("ml_dtypes", reason="bfloat16 NumPy arrays need ml_dtypes")
    env = dict(os.environ, NUMBA_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", "-m",
                           "fusedopt", "demo", "--epochs", "8", "--precision", precision,
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "data-parallel on 2 ranks" in done.stdout
    assert done.stdout.count("held-out accuracy") == 1  # rank 0 alone speaks
    parallel = float(re.search(r"held-out accuracy (\d\.\d+)", done.stdout).group(1))
    single = demo.run(epochs=8, precision=precision, out=None, progress=False,
                      log=lambda *a: None)
    assert abs(parallel - single.test_accuracy) <= 0.01, (parallel, single.test_accuracy)


def test_each_rank_gets_its_share_of_the_cores(tmp_path):
    script = tmp_path / "threads.py"
    script.write_text("import os, sys, numba\nfrom fusedopt import distributed\n"
                      "comm = distributed.init()\n"
                      "with open(f'{sys.argv[1]}/rank{comm.rank}.txt', 'w') as f:\n"
                      "    f.write(f'{comm.rank} {numba.get_num_threads()} {os.cpu_count()}')\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", str(script),
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert len(lines) == 2
    for _, threads, cores in lines:
        assert int(threads) == max(1, int(cores) // 2)
