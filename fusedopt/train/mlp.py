"""A small multilayer perceptron: the custom training loop users start from.

The lecture's layout: ``X`` is ``(n_x, m)`` (one sample per column) and ``Y``
is ``(n_y, m)``: one-hot labels with a softmax output (``n_y >= 2``), or 0/1
labels with a sigmoid output (``n_y == 1``). Hidden layers use ReLU. The cost
is the mean cross-entropy. The weights ``W[l]: (n_l, n_{l-1})`` and biases
``b[l]: (n_l, 1)`` live in a :class:`~fusedopt.ParamArena`, so any fusedopt
optimizer updates the whole network in one launch; backward propagation writes
the gradients straight into ``arena.grads``.

Every buffer a step needs (the activations ``A[l]`` and one delta buffer per
layer) is allocated when the batch size changes and reused while it stays the
same (a smaller last mini-batch reallocates them), so the memory model in
:mod:`fusedopt.planner` can predict the peak; NumPy or CuPy.

A training loop, the lecture's mini-batch gradient descent::

    net = fo.MLP([64, 32, 10])
    opt = fo.Adam(net.arena, lr=1e-2)
    for epoch in range(1, 21):
        for X_t, Y_t in fo.minibatches(X, Y, 128, seed=0):
            net.train_step(X_t, Y_t, opt)     # forward, cost, backward, fused update
        opt.next_epoch()
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from fusedopt.arena import ParamArena

_TINY = 1e-12  # keeps log() finite for a probability that underflowed to zero


class MLP:
    """Fully connected network ``layer_sizes = [n_x, n_1, ..., n_y]``.

    Args:
        layer_sizes: units per layer, input first, at least two entries.
        dtype: float32 (default) or float64.
        xp: ``"numpy"`` (default) or ``"cupy"``.
        seed: for the He initialisation ``W ~ N(0, 2/n_{l-1})`` (biases start at zero).
    """

    def __init__(self, layer_sizes: Sequence[int], *, dtype=np.float32, xp: str = "numpy",
                 seed: int = 0):
        sizes = [int(n) for n in layer_sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"MLP: layer_sizes={list(layer_sizes)!r}; give at least the input "
                             "and output sizes, all >= 1 (e.g. [64, 32, 10])")
        self.layer_sizes = sizes
        self.arena = ParamArena(self.parameter_shapes(sizes), dtype=dtype, xp=xp)
        self.xp = np if xp == "numpy" else __import__("cupy")
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        for layer, W in enumerate(self.weights):
            self._he_init(rng, W, np.sqrt(2.0 / sizes[layer]))
        self._batch = None
        self._A: list = []
        self._delta: list = []

    def _he_init(self, rng, W, scale: float) -> None:
        """``W ~ N(0, scale^2)`` drawn in W's own dtype, straight into W: building the model
        allocates nothing beyond its arena (a float64 draw of the largest weight would
        have cost 12 bytes per element, more than a whole step at small batches)."""
        if self.xp is np:
            rng.standard_normal(out=W, dtype=W.dtype)
            W *= W.dtype.type(scale)
        else:  # drawn on the host, in W's dtype, copied into the device array in place
            host = rng.standard_normal(W.shape, dtype=W.dtype)
            host *= W.dtype.type(scale)
            W.set(host)

    # ------------------------------------------------ what the memory planner asks
    @staticmethod
    def parameter_shapes(layer_sizes: Sequence[int]) -> list[tuple[int, int]]:
        """Parameter shapes, in arena order: ``W[l]: (n_l, n_{l-1})``, ``b[l]: (n_l, 1)``."""
        shapes = []
        for n_in, n_out in itertools.pairwise(layer_sizes):
            shapes += [(int(n_out), int(n_in)), (int(n_out), 1)]
        return shapes

    @staticmethod
    def activation_bytes(layer_sizes: Sequence[int], batch_size: int, dtype=np.float32, *,
                         x_dtype=None, y_dtype=None) -> dict[str, int]:
        """Bytes of what training at ``batch_size`` holds besides the parameters.

        ``activations A[l]`` and ``backward deltas`` are the workspace (one
        ``n_l x b`` buffer of each per layer, see :meth:`_workspace`), kept from
        step to step. ``step temporaries`` live only inside a step: the largest of
        the ReLU mask of backward propagation (one byte per element of the widest
        hidden layer), the softmax's column reduction or the sigmoid's ``1 - Y``
        (one row), NumPy's buffers for the in-place broadcasts (see below), and a copy
        of ``X{t}`` in the parameters' dtype that matrix products make when
        ``x_dtype`` differs. Python integers: no overflow.
        """
        itemsize = np.dtype(dtype).itemsize
        b = int(batch_size)
        units = sum(int(n) for n in layer_sizes[1:])
        hidden = [int(n) for n in layer_sizes[1:-1]]
        n_y = int(layer_sizes[-1])

        # An in-place op whose operand is broadcast along one axis (``A += bias``, the
        # softmax's ``A -= max`` and ``A /= sum``) over rows shorter than NumPy's buffer
        # (np.getbufsize(), 8192 elements) is buffered: up to 8192 elements of the dtype.
        def buffered(rows: int) -> int:
            return min(8192, rows * b) * itemsize if b < 8192 else 0

        # Backward multiplies by the bool mask, cast in the same buffers.
        mask = max(hidden) * b + min(8192, max(hidden) * b) * itemsize if hidden else 0
        row = b * max(itemsize, np.dtype(y_dtype or dtype).itemsize)
        softmax = row + buffered(n_y) if n_y > 1 else row  # the row, then A -= row
        bias = buffered(max(int(n) for n in layer_sizes[1:]))
        cast = (int(layer_sizes[0]) * b * itemsize
                if x_dtype is not None and np.dtype(x_dtype) != np.dtype(dtype) else 0)
        return {"activations A[l]": units * b * itemsize,
                "backward deltas": units * b * itemsize,
                "step temporaries": max(mask, softmax, bias) + cast}

    @property
    def weights(self) -> list:
        return self.arena.params[0::2]

    @property
    def biases(self) -> list:
        return self.arena.params[1::2]

    def _workspace(self, b: int) -> None:
        if self._batch != b:
            self._A = self._delta = []  # release the old size's buffers first
            self._A = [self.xp.empty((n, b), self.dtype) for n in self.layer_sizes[1:]]
            self._delta = [self.xp.empty((n, b), self.dtype) for n in self.layer_sizes[1:]]
            self._batch = b

    def forward(self, X):
        """Output probabilities ``A[L]`` for ``X: (n_x, b)`` (kept for :meth:`backward`)."""
        xp = self.xp
        if X.ndim != 2 or X.shape[0] != self.layer_sizes[0]:
            raise ValueError(f"MLP.forward: X has shape {X.shape}; expected "
                             f"({self.layer_sizes[0]}, batch) (samples as columns)")
        self._workspace(X.shape[1])
        A_prev = X
        last = len(self._A) - 1
        for layer, (W, b, A) in enumerate(zip(self.weights, self.biases, self._A, strict=True)):
            xp.matmul(W, A_prev, out=A)
            A += b
            if layer < last:
                xp.maximum(A, 0, out=A)  # ReLU
            A_prev = A
        A = self._A[-1]
        if A.shape[0] == 1:  # sigmoid
            xp.negative(A, out=A)
            xp.exp(A, out=A)
            A += 1
            xp.reciprocal(A, out=A)
        else:  # softmax over the classes (rows), stabilised by the column max
            A -= A.max(axis=0, keepdims=True)
            xp.exp(A, out=A)
            A /= A.sum(axis=0, keepdims=True)
        return A

    def cost(self, Y) -> float:
        """Mean cross-entropy of the last :meth:`forward` against ``Y: (n_y, b)``."""
        xp = self.xp
        A, scratch = self._A[-1], self._delta[-1]
        if Y.shape != A.shape:
            raise ValueError(f"MLP.cost: Y has shape {Y.shape}; expected {A.shape}")
        b = A.shape[1]
        xp.clip(A, _TINY, 1.0, out=scratch)
        xp.log(scratch, out=scratch)
        scratch *= Y
        total = -float(scratch.sum())
        if A.shape[0] == 1:  # the (1 - y) log(1 - a) half of the binary cross-entropy
            xp.subtract(1.0, A, out=scratch)
            xp.clip(scratch, _TINY, 1.0, out=scratch)
            xp.log(scratch, out=scratch)
            scratch *= 1.0 - Y
            total -= float(scratch.sum())
        return total / b

    def backward(self, X, Y) -> None:
        """Gradients of the mean cross-entropy into ``arena.grads`` (after :meth:`forward`)."""
        xp = self.xp
        b = X.shape[1]
        delta = self._delta[-1]
        xp.subtract(self._A[-1], Y, out=delta)  # dZ[L] = A[L] - Y for both output types
        delta *= 1.0 / b
        grads_W, grads_b = self.arena.grads[0::2], self.arena.grads[1::2]
        for layer in range(len(self.weights) - 1, -1, -1):
            A_prev = X if layer == 0 else self._A[layer - 1]
            xp.matmul(self._delta[layer], A_prev.T, out=grads_W[layer])
            xp.sum(self._delta[layer], axis=1, keepdims=True, out=grads_b[layer])
            if layer > 0:
                below = self._delta[layer - 1]
                xp.matmul(self.weights[layer].T, self._delta[layer], out=below)
                xp.multiply(below, self._A[layer - 1] > 0, out=below)  # ReLU'

    def loss_and_grad(self, X, Y) -> float:
        """Forward propagation, cost, backward propagation; returns the cost."""
        self.forward(X)
        cost = self.cost(Y)
        self.backward(X, Y)
        return cost

    def train_step(self, X, Y, optimizer) -> float:
        """One step of mini-batch gradient descent with ``optimizer`` (over ``self.arena``)."""
        cost = self.loss_and_grad(X, Y)
        optimizer.step()
        return cost

    def predict(self, X):
        """Class indices (softmax) or 0/1 (sigmoid) for ``X: (n_x, b)``."""
        A = self.forward(X)
        if A.shape[0] == 1:
            return (A[0] > 0.5).astype(np.int64)
        return A.argmax(axis=0)

    def accuracy(self, X, labels) -> float:
        """Fraction of ``labels`` (shape ``(b,)``) predicted right."""
        return float((self.predict(X) == labels).mean())


def one_hot(labels, classes: int, dtype=np.float32, xp=np):
    """``(classes, m)`` one-hot columns for integer ``labels`` of shape ``(m,)``."""
    labels = xp.asarray(labels)
    out = xp.zeros((classes, labels.shape[0]), dtype)
    out[labels, xp.arange(labels.shape[0])] = 1
    return out
