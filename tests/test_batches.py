"""fo.minibatches: the lecture's shuffle-and-partition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fusedopt as fo


def data(n_x=3, m=10, layout=1):
    X = np.arange(n_x * m, dtype=np.float32).reshape(n_x, m)  # column j holds j, m+j, ...
    Y = np.arange(m, dtype=np.float32)[None, :]
    return (X, Y) if layout == 1 else (np.ascontiguousarray(X.T), np.ascontiguousarray(Y.T))


@given(m=st.integers(1, 300), batch=st.integers(1, 400), layout=st.sampled_from([0, 1]),
       drop_last=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_every_sample_exactly_once_per_epoch(m, batch, layout, drop_last, seed):
    X, Y = data(3, m, layout)
    seen, sizes = [], []
    for X_t, Y_t in fo.minibatches(X, Y, batch, sample_axis=layout, seed=seed,
                                   drop_last=drop_last):
        labels = Y_t.reshape(-1)
        cols = X_t if layout == 1 else X_t.T
        # Each sample's X and Y stay together.
        np.testing.assert_array_equal(cols[0], labels)
        assert X_t.flags.c_contiguous and Y_t.flags.c_contiguous
        seen.extend(labels.astype(int).tolist())
        sizes.append(labels.size)
    full = (m // batch) * batch
    if drop_last:
        assert len(seen) == full and all(s == batch for s in sizes)
        assert len(set(seen)) == full
    else:
        assert sorted(seen) == list(range(m))
        assert all(s == batch for s in sizes[:-1]) and 1 <= sizes[-1] <= batch
        assert len(sizes) == -(-m // batch)


def test_a_new_permutation_every_epoch_and_reproducible_with_a_seed():
    X, Y = data(2, 50)

    def epoch(seed):
        return np.concatenate([y.ravel() for _, y in fo.minibatches(X, Y, 8, seed=seed)])

    first, second = epoch(123), epoch(123)
    assert not np.array_equal(first, second)  # epochs differ
    assert sorted(first) == sorted(second) == list(range(50))
    # The same seed replays the same sequence of epochs in a fresh process.
    import subprocess
    import sys

    code = ("import numpy as np, fusedopt as fo\n"
            "X = np.arange(100, dtype=np.float32).reshape(2, 50); Y = X[1:] - 50\n"
            "for _ in range(2):\n"
            "    print(np.concatenate([y.ravel() for _, y in fo.minibatches(X, Y, 8, seed=123)])"
            ".astype(int).tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    from fusedopt.train import batches

    batches._seed_calls.pop(123, None)
    assert out[0] == str(epoch(123).astype(int).tolist())
    assert out[1] == str(epoch(123).astype(int).tolist())
    rng = np.random.default_rng(0)
    assert not np.array_equal(epoch(rng), epoch(rng))


def test_no_shuffle_keeps_order_and_full_batch_is_batch_gradient_descent():
    X, Y = data(2, 10)
    got = [y.ravel().tolist() for _, y in fo.minibatches(X, Y, 4, shuffle=False)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    (only,) = list(fo.minibatches(X, Y, 10_000))
    assert only[0].shape == (2, 10)


def test_one_dimensional_labels():
    X, _ = data(2, 7)
    y = np.arange(7)
    seen = np.concatenate([y_t for _, y_t in fo.minibatches(X, y, 3, seed=1)])
    assert sorted(seen.tolist()) == list(range(7))


@pytest.mark.parametrize("kwargs, error, word", [
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=2.5), TypeError, "batch_size"),
    (dict(batch_size=2, sample_axis=2), ValueError, "sample_axis"),
    (dict(batch_size=2, seed="x"), TypeError, "seed"),
])
def test_bad_arguments(kwargs, error, word):
    X, Y = data(2, 6)
    with pytest.raises(error, match=word):
        fo.minibatches(X, Y, **kwargs)


def test_mismatched_sample_counts():
    X, Y = data(2, 6)
    with pytest.raises(ValueError, match="samples"):
        fo.minibatches(X, Y[:, :5], 2)
    with pytest.raises(ValueError, match="sample_axis=0"):
        fo.minibatches(X, Y, 2, sample_axis=0)


def test_cupy_arrays_are_shuffled_on_the_device(host_cupy):
    X, Y = data(2, 20)
    Xd, Yd = host_cupy.asarray(X), host_cupy.asarray(Y)
    batches = list(fo.minibatches(Xd, Yd, 6, seed=3))
    assert all(isinstance(x, host_cupy.ndarray) for x, _ in batches)
    assert sorted(np.concatenate([np.array(y).ravel() for _, y in batches])) == list(range(20))
