r"""Learning-rate decay, as in the lecture: callables ``schedule(t) -> lr``.

``t`` is the 1-based count the schedule is driven by: the epoch number (one
pass over the training set; the first epoch is 1, as in the lecture's table
where epoch 1 with :math:`\alpha_0 = 0.2` and ``decay_rate=1`` gives 0.1) or,
for ``inverse_sqrt``, the mini-batch number :math:`t` as well. ``t < 1`` is a
``ValueError``. Each schedule is a small frozen dataclass (named in lower case:
it is used as a function), so it prints its parameters and can be compared.

=====================  ==============================================================
``inverse_time``       :math:`\alpha = \alpha_0 / (1 + \text{decay\_rate}\cdot t)`
``exponential``        :math:`\alpha = \alpha_0\, \text{base}^{t}` (the lecture's 0.95)
``inverse_sqrt``       :math:`\alpha = \alpha_0\, k / \sqrt{t}`
``staircase``          :math:`\alpha = \alpha_0\, \text{factor}^{\lfloor (t-1)/\text{every}\rfloor}`
``constant``           :math:`\alpha = \alpha_0`
=====================  ==============================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fusedopt import _checks


def _count(name: str, t) -> int:
    return _checks.count(name, "t", t, "the 1-based epoch or step",
                         "epochs and steps count from 1")


@dataclass(frozen=True)
class inverse_time:
    r""":math:`\alpha = \alpha_0 / (1 + \text{decay\_rate}\cdot t)`."""

    lr0: float
    decay_rate: float

    def __post_init__(self):
        _checks.real("inverse_time", "lr0", self.lr0, 0.0)
        _checks.real("inverse_time", "decay_rate", self.decay_rate, 0.0)

    def __call__(self, t: int) -> float:
        return self.lr0 / (1.0 + self.decay_rate * _count("inverse_time", t))


@dataclass(frozen=True)
class exponential:
    r""":math:`\alpha = \alpha_0\,\text{base}^{t}` (exponential decay; the lecture uses 0.95)."""

    lr0: float
    base: float = 0.95

    def __post_init__(self):
        _checks.real("exponential", "lr0", self.lr0, 0.0)
        _checks.real("exponential", "base", self.base, 0.0, 1.0)

    def __call__(self, t: int) -> float:
        return self.lr0 * self.base ** _count("exponential", t)


@dataclass(frozen=True)
class inverse_sqrt:
    r""":math:`\alpha = \alpha_0\, k/\sqrt{t}`, by epoch or by mini-batch number."""

    lr0: float
    k: float = 1.0

    def __post_init__(self):
        _checks.real("inverse_sqrt", "lr0", self.lr0, 0.0)
        _checks.real("inverse_sqrt", "k", self.k, 0.0)

    def __call__(self, t: int) -> float:
        return self.lr0 * self.k / math.sqrt(_count("inverse_sqrt", t))


@dataclass(frozen=True)
class staircase:
    r"""Discrete staircase: :math:`\alpha_0` for the first ``every`` epochs, then times ``factor``.

    :math:`\alpha = \alpha_0\,\text{factor}^{\lfloor (t-1)/\text{every} \rfloor}`
    """

    lr0: float
    factor: float = 0.5
    every: int = 10

    def __post_init__(self):
        _checks.real("staircase", "lr0", self.lr0, 0.0)
        _checks.real("staircase", "factor", self.factor, 0.0, 1.0)
        _checks.count("staircase", "every", self.every, "epochs or steps per stair",
                      "a stair lasts at least one")

    def __call__(self, t: int) -> float:
        return self.lr0 * self.factor ** ((_count("staircase", t) - 1) // self.every)


@dataclass(frozen=True)
class constant:
    r""":math:`\alpha = \alpha_0`: no decay (the baseline the others are compared with)."""

    lr0: float

    def __post_init__(self):
        _checks.real("constant", "lr0", self.lr0, 0.0)

    def __call__(self, t: int) -> float:
        _count("constant", t)
        return float(self.lr0)


__all__ = ["constant", "exponential", "inverse_sqrt", "inverse_time", "staircase"]
