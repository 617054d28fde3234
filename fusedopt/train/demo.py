"""``fusedopt demo``: the whole library at work on real data, in well under a minute.

It loads the UCI handwritten digits shipped with scikit-learn (1,797 8x8
images; nothing is downloaded), plans the mini-batch size for the MLP on this
machine, trains the MLP with mini-batch gradient descent through the fused
kernels (Adam by default, with the lecture's learning-rate decay
``lr0 / (1 + decay_rate * epoch)``), prints the held-out accuracy and the time,
and draws the cost of every mini-batch (raw, and its bias-corrected
exponentially weighted average) and the learning rate over time.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from fusedopt import _checks, distributed, schedules
from fusedopt.kernels import optimizer_rule
from fusedopt.optim import make_optimizer
from fusedopt.train import precision as precisions
from fusedopt.train.batches import minibatches
from fusedopt.train.datasets import load_digits
from fusedopt.train.mlp import MLP
from fusedopt.train.planner import plan_batch_size


@dataclass
class DemoResult:
    """What the demo did."""

    test_accuracy: float
    train_accuracy: float
    seconds: float
    batch_size: int
    epochs: int
    steps: int
    costs: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    plan_text: str = ""


def run(*, backend: str | None = None, optimizer: str = "adam", epochs: int = 30,
        batch_size: int | str = 64, out: str | None = "fusedopt-demo", hidden: int = 64,
        lr: float | None = None, seed: int = 0, progress: bool = True,
        precision: str = "fp32", log=print) -> DemoResult:
    """Train the MLP on the digits; see the module docstring. ``precision`` is a recipe of
    :mod:`fusedopt.train.precision` (fp32, bf16, bf16-sr, fp16-master)."""
    precisions.check(precision, "cupy" if backend == "cupy" else "numpy")
    comm = distributed.init()  # under mpiexec: data-parallel, ZeRO-1; else one process
    if comm.rank != 0:  # one voice, one set of plots
        log, progress, out = (lambda *args, **kwargs: None), False, None
    if out is not None:
        out = _checks.output_dir("demo", "out", out)
    data = load_digits(seed=seed)
    X, Y, X_test = data.X_train, data.Y_train, data.X_test
    xp = "numpy"
    if backend == "cupy":
        import cupy

        X, Y, X_test = cupy.asarray(X), cupy.asarray(Y), cupy.asarray(X_test)
        xp = "cupy"
    layers = [X.shape[0], hidden, data.classes]
    m = X.shape[1]
    plan = plan_batch_size(X, Y, layer_sizes=layers, optimizer=optimizer,
                           backend="cupy" if xp == "cupy" else None, world_size=comm.size,
                           shard_state=comm.size > 1)
    log(f"data: {data.name}, {m} training and {X_test.shape[1]} held-out images, "
        f"X: {tuple(X.shape)} (samples as columns)")
    log(f"plan: {plan.reason}; peak {plan.peak_bytes / 2**20:.2f} MiB of "
        f"{plan.available_bytes / 2**30:.1f} GiB available")
    if batch_size == "plan":
        batch_size = plan.batch_size
    elif batch_size != plan.batch_size:
        log(f"      the demo trains with mini-batches of {batch_size} instead (--batch-size plan "
            "follows the plan; `fusedopt profile` measures which lowers the cost faster)")
    log(f"training: MLP {layers}, {optimizer}, mini-batches of {batch_size}, {epochs} epochs, "
        f"backend {backend or ('cupy' if xp == 'cupy' else 'numba')}, precision {precision}"
        + (f", data-parallel on {comm.size} ranks (ZeRO-1: each holds 1/{comm.size} of the "
           "optimizer state)" if comm.size > 1 else ""))
    parallel = dict(comm=comm, shard_state=True) if comm.size > 1 else {}
    net = MLP(layers, xp=xp, seed=seed)
    lr0 = lr if lr is not None else optimizer_rule(optimizer).typical_lr
    schedule = schedules.inverse_time(lr0, decay_rate=0.05)
    trainer = precisions.Trainer(
        net, precision, lambda params, **options: make_optimizer(
            optimizer, params, lr=lr0, schedule=schedule, backend=backend, **options,
            **parallel), seed=seed)
    opt = trainer.opt
    train_step = (trainer.train_step if comm.size == 1
                  else precisions.data_parallel_step(trainer, comm))
    costs, lrs = [], []
    rng = np.random.default_rng(seed)  # one stream for the run: reproducible, new each epoch
    epochs_iter = range(1, epochs + 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = epochs_iter = tqdm(epochs_iter, desc="epochs", unit="epoch", file=sys.stderr)
    start = time.perf_counter()
    for _ in epochs_iter:
        for X_t, Y_t in minibatches(X, Y, batch_size, seed=rng):
            lrs.append(opt.lr)
            costs.append(train_step(X_t, Y_t))
        opt.next_epoch()
        if bar is not None:
            bar.set_postfix(cost=f"{costs[-1]:.4f}", lr=f"{opt.lr:.4g}")
    seconds = time.perf_counter() - start
    labels_test = data.labels_test if xp == "numpy" else __import__("cupy").asarray(
        data.labels_test)
    labels_train = data.labels_train if xp == "numpy" else __import__("cupy").asarray(
        data.labels_train)
    result = DemoResult(test_accuracy=net.accuracy(X_test, labels_test),
                        train_accuracy=net.accuracy(X, labels_train), seconds=seconds,
                        batch_size=int(batch_size), epochs=epochs, steps=opt.step_count,
                        costs=costs, lrs=lrs, plan_text=plan.table())
    log(f"held-out accuracy {result.test_accuracy:.4f} (training {result.train_accuracy:.4f}) "
        f"after {result.steps} steps in {seconds:.2f} s")
    if out is not None:
        result.plots = plot(result, out, optimizer)
        log(f"plots: {', '.join(result.plots)}")
    return result


def plot(result: DemoResult, out: str, optimizer: str) -> list[str]:
    """The cost per mini-batch and the learning rate, as PNG files in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fusedopt.train.profile_report import smoothed

    os.makedirs(out, exist_ok=True)
    steps = np.arange(1, len(result.costs) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(steps, result.costs, lw=0.6, alpha=0.5, label="cost J{t} of each mini-batch")
    ax.plot(steps, smoothed(result.costs, 0.98), lw=1.6,
            label="exponentially weighted average (beta = 0.98, bias-corrected)")
    ax.set_yscale("log")
    ax.set_xlabel("mini-batch t")
    ax.set_ylabel("cross-entropy cost")
    ax.set_title(f"Mini-batch {optimizer} on the digits (batch size {result.batch_size})")
    ax.legend()
    fig.tight_layout()
    cost_path = os.path.join(out, "cost.png")
    fig.savefig(cost_path, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(steps, result.lrs)
    ax.set_xlabel("mini-batch t")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate decay: lr0 / (1 + 0.05 * epoch)")
    fig.tight_layout()
    lr_path = os.path.join(out, "learning_rate.png")
    fig.savefig(lr_path, dpi=110)
    plt.close(fig)
    return [cost_path, lr_path]
