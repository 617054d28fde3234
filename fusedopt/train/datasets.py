"""Real data shipped inside a registry package: nothing is downloaded at run time.

``load_digits`` reads scikit-learn's copy of the UCI handwritten digits (1,797
8x8 images, 10 classes), which lives in the scikit-learn wheel itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusedopt.train.mlp import one_hot


@dataclass
class Split:
    """A training/test split in the lecture's layout: ``X: (n_x, m)``, ``Y: (n_y, m)`` one-hot."""

    X_train: np.ndarray
    Y_train: np.ndarray
    labels_train: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray
    labels_test: np.ndarray
    name: str

    @property
    def classes(self) -> int:
        return self.Y_train.shape[0]


def load_digits(test_fraction: float = 0.2, seed: int = 0, dtype=np.float32) -> Split:
    """The UCI digits from scikit-learn (pixels scaled to [0, 1]), split at random."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise ImportError("the digits data set comes with scikit-learn: "
                          "pip install 'fusedopt[demo]'") from exc
    data = sklearn_digits()
    X = (data.data / 16.0).astype(dtype).T  # (64, 1797): samples as columns
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(labels.size)
    n_test = round(test_fraction * labels.size)
    test, train = order[:n_test], order[n_test:]
    classes = int(labels.max()) + 1
    return Split(np.ascontiguousarray(X[:, train]), one_hot(labels[train], classes, dtype),
                 labels[train], np.ascontiguousarray(X[:, test]),
                 one_hot(labels[test], classes, dtype), labels[test], "UCI digits (scikit-learn)")
