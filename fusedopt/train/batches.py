"""Mini-batches, as in the lecture: shuffle the training set, then partition it.

Each epoch (each call) draws a new permutation of the ``m`` samples and cuts
it into consecutive mini-batches ``X{t}, Y{t}`` of ``batch_size`` samples; the
last one holds what is left (or is dropped with ``drop_last``). With
``batch_size = m`` this is batch gradient descent, with ``batch_size = 1``
stochastic gradient descent.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from numbers import Integral

import numpy as np

from fusedopt import _checks

_calls = itertools.count()
_seed_calls: dict[int, int] = {}
_lock = threading.Lock()


def _generator(seed, xp):
    """A random generator for this call: a new stream every call, reproducible per seed."""
    if isinstance(seed, bool):
        raise TypeError("minibatches: seed must be None, an int or a random Generator, not bool")
    if seed is None or isinstance(seed, Integral):
        if seed is None:
            entropy = None
        else:
            if seed < 0:
                raise ValueError(f"minibatches: seed={seed} is negative; pass an int >= 0 "
                                 "(or None, or a numpy.random.Generator)")
            with _lock:  # the k-th call with a given seed always gets the same stream
                k = _seed_calls.get(int(seed), 0)
                _seed_calls[int(seed)] = k + 1
            entropy = [int(seed), k]
        if xp is np:
            return np.random.default_rng(entropy)
        # CuPy: a device RandomState (it has permutation), seeded from the same entropy.
        return xp.random.RandomState(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
    if isinstance(seed, np.random.Generator) or hasattr(seed, "permutation"):
        return seed
    raise TypeError(f"minibatches: seed must be None, an int or a random Generator, not "
                    f"{type(seed).__name__}")


def minibatches(X, Y, batch_size: int, *, sample_axis: int = 1, shuffle: bool = True,
                seed=None, drop_last: bool = False) -> Iterator[tuple]:
    """Yield the mini-batches ``(X_t, Y_t)`` of one epoch.

    Args:
        X: inputs; ``(n_x, m)`` with ``sample_axis=1`` (the lecture's layout, samples
            as columns) or ``(m, n_x)`` with ``sample_axis=0``. NumPy or CuPy (CuPy
            arrays are shuffled on the device).
        Y: targets, with the samples along the same axis (e.g. ``(1, m)`` or ``(n_y, m)``).
        batch_size: samples per mini-batch, ``1 <= batch_size``; ``m`` or more gives
            one batch (batch gradient descent).
        sample_axis: 1 (columns, default) or 0 (rows).
        shuffle: draw a new permutation (True, default) or keep the order.
        seed: None (fresh randomness), an int (reproducible: the k-th call with the
            same seed always draws the same permutation, and successive calls, i.e.
            epochs, draw different ones), or a ``numpy.random.Generator``.
        drop_last: drop a last batch smaller than ``batch_size``.

    Yields:
        ``(X_t, Y_t)``: contiguous copies holding the batch's samples.
    """
    f = "minibatches"
    if sample_axis not in (0, 1):
        raise ValueError(f"{f}: sample_axis={sample_axis!r}; use 1 for X: (n_x, m) (the "
                         "lecture's layout) or 0 for X: (m, n_x)")
    batch_size = _checks.count(f, "batch_size", batch_size, "samples per mini-batch",
                               "a mini-batch holds at least one sample")
    kinds = {_checks.array_kind(X), _checks.array_kind(Y)}
    if kinds - {"numpy", "cupy"} or len(kinds) > 1:
        raise TypeError(f"{f}: X and Y must both be NumPy arrays or both CuPy arrays")
    if X.ndim != 2 or Y.ndim not in (1, 2):
        raise ValueError(f"{f}: X must be 2-D and Y 1-D or 2-D; got X {X.shape}, Y {Y.shape}")
    y_axis = 0 if Y.ndim == 1 else sample_axis
    m = X.shape[sample_axis]
    if Y.shape[y_axis] != m:
        raise ValueError(f"{f}: X has {m} samples along axis {sample_axis} but Y has "
                         f"{Y.shape[y_axis]}; with sample_axis={sample_axis} both hold one "
                         "sample per " + ("column" if sample_axis == 1 else "row"))
    _checks.flag(f, "shuffle", shuffle)
    _checks.flag(f, "drop_last", drop_last)
    xp = np if "numpy" in kinds else __import__("cupy")
    rng = _generator(seed, xp)
    return _batches(X, Y, int(batch_size), sample_axis, y_axis, m, shuffle, rng, drop_last, xp)


def _batches(X, Y, batch_size, sample_axis, y_axis, m, shuffle, rng, drop_last, xp):
    # The permutation lives where the data lives (a host Generator's indices are copied over).
    order = xp.asarray(rng.permutation(m)) if shuffle else None
    stop = m - m % batch_size if drop_last else m
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, m)
        if order is None:
            index = slice(start, end)
            X_t = xp.ascontiguousarray(X[:, index] if sample_axis == 1 else X[index])
            Y_t = xp.ascontiguousarray(Y[:, index] if y_axis == 1 else Y[index])
        else:
            index = order[start:end]
            X_t = xp.take(X, index, axis=sample_axis)
            Y_t = xp.take(Y, index, axis=y_axis)
        yield X_t, Y_t
        # Hold nothing between batches: the next batch is gathered while the caller still
        # holds this one, and the generator must not hold it a second time.
        del X_t, Y_t, index

