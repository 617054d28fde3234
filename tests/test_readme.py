"""The README's Python examples run, and do what they say."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_training_loop_example_learns():
    blocks = python_blocks()
    assert blocks, "the README has a Python example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {})
    accuracy = float(out.getvalue().split()[-1])
    assert accuracy > 0.95, out.getvalue()


def test_arena_example_trains_and_checkpoints(tmp_path, monkeypatch):
    block = next(b for b in python_blocks() if "ParamArena" in b)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    accuracy = float(out.getvalue().split()[-1])
    assert accuracy > 0.95, out.getvalue()
    assert (tmp_path / "checkpoint.npz").exists()
    assert "next lr 0.0266" in out.getvalue()  # 0.05 * 0.9**6: the schedule runs by epoch


def test_gpu_example_compiles():
    """The GPU example needs a GPU to run; here it must at least be valid Python."""
    gpu_blocks = [b for b in python_blocks() if "cuda" in b]
    assert gpu_blocks
    for block in gpu_blocks:
        compile(block, "README.md", "exec")


def test_training_loop_example_is_short():
    code = [line for line in python_blocks()[0].splitlines() if line.strip()]
    assert len(code) <= 25


def test_measured_plan_example_fits_its_limit():
    block = next(b for b in python_blocks() if "measure_batch_size" in b)
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, "README.md", "exec"), namespace)
    plan = namespace["plan"]
    assert plan.fits and plan.confirmed_peak <= 64 * 2**20
    assert plan.bytes_per_sample == pytest.approx(12_576, rel=0.02)  # the line printed there


def test_pytorch_example_trains_and_its_checkpoint_loads_into_torch(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch", reason="the PyTorch example needs torch")
    block = next(b for b in python_blocks() if "fusedopt.torch" in b)
    monkeypatch.chdir(tmp_path)
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(784, 10, generator=generator)
    xs = [torch.randn(64, 784, generator=generator) for _ in range(60)]
    batches = [(x, (x @ teacher).argmax(1)) for x in xs]
    scope = {"batches": batches}
    exec(compile(block, "README.md", "exec"), scope)
    model = scope["model"]
    with torch.no_grad():
        first = torch.nn.functional.cross_entropy(model(xs[0]), batches[0][1])
    assert first < 1.0  # from about ln(10) = 2.3 before training
    theirs = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    theirs.load_state_dict(torch.load(tmp_path / "opt.pt"))
    assert float(theirs.state[next(model.parameters())]["step"]) == 60


def test_distributed_example_runs_alone_and_under_mpiexec(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    pytest.importorskip("mpi4py", reason="the MPI example needs mpi4py ('fusedopt[mpi]')")
    block = next(b for b in python_blocks() if "distributed.init()" in b)
    script = tmp_path / "train.py"
    script.write_text(block)
    mpiexec = shutil.which("mpiexec") or str(pathlib.Path(sys.executable).parent / "mpiexec")
    env = dict(os.environ, NUMBA_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(README.parent), os.environ.get("PYTHONPATH",
                                                                             "")]))
    outputs = {}
    for ranks in (1, 2):
        command = [sys.executable, str(script)] if ranks == 1 else [
            mpiexec, "-n", "2", sys.executable, "-m", "mpi4py", str(script)]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs[ranks] = done.stdout
        assert (tmp_path / "zero.npz").exists()
    assert outputs[1].startswith("1 rank(s)") and outputs[2].startswith("2 rank(s)")
    # the gradients have a positive mean: Adam moves the zero-initialised biases down
    means = [float(outputs[r].split()[-1]) for r in (1, 2)]
    assert all(-1.0 < m < -0.01 for m in means), means
    # the 2 ranks' checkpoint is an unsharded optimizer's: it loads in one process
    import fusedopt as fo

    arena = fo.ParamArena([(256, 64), (64,)])
    opt = fo.Adam(arena, lr=1e-2, max_grad_norm=1.0)
    fo.load(tmp_path / "zero.npz", opt)
    assert opt.step_count == 100 and float(arena.params[1].mean()) == pytest.approx(means[1],
                                                                                     abs=1e-4)


def test_capturable_example_runs_and_counts_its_steps_on_the_parameters_device():
    torch = pytest.importorskip("torch", reason="the PyTorch example needs torch")
    block = next(b for b in python_blocks() if "capturable=True" in b)
    scope: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), scope)
    assert out.getvalue().strip() == "tensor(3.)"
    model, opt = scope["model"], scope["opt"]
    assert opt.state[model.weight]["step"].device == model.weight.device
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(1e-3 * 0.9**3)
    assert not torch.equal(opt.state[model.weight]["exp_avg"], torch.zeros_like(model.weight))
