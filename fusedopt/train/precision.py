"""The demo's precision recipes: the MLP's parameters held in 16 bits between steps.

The MLP computes in float32 (NumPy has no fast bfloat16 matmul); what changes
with the recipe is what the training keeps between steps, which is where 16-bit
training gains its memory and bandwidth and where it loses precision:

==============  ============================================================
``fp32``        float32 parameters and state (the baseline)
``bf16``        bfloat16 parameters, gradients and state, nearest rounding
``bf16-sr``     the same with stochastic rounding of every 16-bit store
``fp16-master`` float16 parameters and gradients, a float32 master copy and
                float32 state (Apex's recipe)
==============  ============================================================

Each step: the forward and backward pass run on the 16-bit parameters' exact
float32 values, the gradients are rounded to the 16-bit dtype (as a 16-bit
backward pass would produce them), and the optimizer updates the 16-bit arena.
"""

from __future__ import annotations

from fusedopt.arena import ParamArena
from fusedopt.kernels.dtypes import RECIPES


def _options(state: str, master: bool, stochastic: bool) -> dict:
    options = {"state_dtype": state} if state != "float32" else {}
    if master:
        options["master_weights"] = True
    if stochastic:
        options["stochastic_rounding"] = True
    return options


#: recipe -> (parameter dtype, optimizer options): the demo's recipes of dtypes.RECIPES
PRECISIONS: dict[str, tuple[str, dict]] = {
    name: (param, _options(state, master, stochastic))
    for name, (param, state, master, stochastic) in RECIPES.items()
    if name in ("fp32", "bf16", "bf16-sr", "fp16-master")}


def check(precision: str, xp: str) -> None:
    """A recipe this run can use, or a ``ValueError`` naming it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {', '.join(PRECISIONS)}")
    if xp == "cupy" and PRECISIONS[precision][0] == "bfloat16":
        raise ValueError(f"precision={precision!r} on the GPU: CuPy arrays have no bfloat16 "
                         "dtype; use fp16-master there")
    if PRECISIONS[precision][0] == "bfloat16":
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            raise ValueError(f"precision={precision!r} needs the ml_dtypes extra: pip install "
                             "ml_dtypes (or 'fusedopt[bf16]')") from None


class Trainer:
    """``train_step(X, Y) -> cost`` for ``net`` under a precision recipe, with ``opt``."""

    def __init__(self, net, precision: str, make_optimizer, seed: int = 0):
        dtype, options = PRECISIONS[precision]
        self.net = net
        if dtype == "float32":
            self.low = None
            self.opt = make_optimizer(net.arena, **options)
            return
        self.low = ParamArena(list(net.arena.params), dtype=dtype)  # rounded to nearest
        self.opt = make_optimizer(self.low, seed=seed, **options)
        self._sync()

    def _sync(self) -> None:
        """The model computes with the 16-bit parameters' exact float32 values."""
        for full, low in zip(self.net.arena.params, self.low.params, strict=True):
            full[...] = low

    def train_step(self, X, Y, weight: float = 1.0) -> float:
        """One step on the mini-batch ``X, Y``; its cost. ``weight`` multiplies the
        gradients before the optimizer sees them (a data-parallel rank's share of the
        global mini-batch, :func:`data_parallel_step`); a rank with no samples
        contributes zero gradients."""
        if X.shape[1] == 0:
            self.net.arena.zero_grad()
            cost = 0.0
        else:
            cost = self.net.loss_and_grad(X, Y)
            if weight != 1.0:
                for _, grad in self.net.arena.buffers.values():
                    grad *= weight
        if self.low is not None:
            for low, full in zip(self.low.grads, self.net.arena.grads, strict=True):
                low[...] = full  # rounded to nearest, as a 16-bit backward pass stores them
        self.opt.step()
        if self.low is not None:
            self._sync()
        return cost


def data_parallel_step(trainer: Trainer, comm):
    """``step(X_t, Y_t) -> cost`` that trains on this rank's block of the global mini-batch.

    Every rank draws the same mini-batch (one seed); rank r takes its contiguous block of
    ``n_r`` of its ``b`` columns, and weights its mean gradient by ``n_r W / b``, so the
    optimizer's average over the W ranks is the gradient of the whole mini-batch's mean
    cost (blocks differ by one sample when W does not divide b). The cost returned is the
    mini-batch's, summed across ranks (one small all-reduce).
    """
    import numpy as np

    from fusedopt.optim.parallel import blocks

    def step(X_t, Y_t) -> float:
        b = X_t.shape[1]
        counts, displs = blocks(b, comm.size)
        lo, n = displs[comm.rank], counts[comm.rank]
        cost = trainer.train_step(X_t[:, lo:lo + n], Y_t[:, lo:lo + n],
                                  weight=n * comm.size / b)
        total = np.array([cost * n / b])
        comm.all_reduce(total)
        return float(total[0])

    return step
