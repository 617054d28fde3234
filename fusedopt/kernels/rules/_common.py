"""Hyperparameters, documentation and helpers the rule files share."""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from fusedopt.kernels.registry import ScalarRangeError, beta, flag, real

__all__ = ["BETA1", "BETA2", "BIAS_CORRECTION", "DECOUPLED", "EPS", "EXP_AVG_DOC",
           "EXP_AVG_SQ_DOC", "LR_DOC", "WEIGHT_DECAY", "adam_like_torch", "host_sqrt",
           "weight_decay_split"]

LR_DOC = "learning rate alpha"
WEIGHT_DECAY = real("weight_decay", 0.0, "L2 coefficient lambda, added to the gradient",
                    symbol=r"\lambda")
# eps > 0: with eps = 0 a zero gradient on a zero state (an unused unit) divides 0 by 0.
EPS = real("eps", 1e-8, "added to the denominator's square root", lo_open=True,
           symbol=r"\epsilon")
BETA1 = beta("beta1", 0.9, "decay of the first moment", r"\beta_1")
BETA2 = beta("beta2", 0.999, "decay of the second moment", r"\beta_2")
DECOUPLED = flag("decoupled_weight_decay", False,
                 "AdamW-style: shrink the parameter by (1 - lr*weight_decay) instead of adding "
                 "weight_decay*param to the gradient")
BIAS_CORRECTION = flag("bias_correction", True, "divide the moments by 1 - beta**step")
EXP_AVG_DOC = "first moment m, an exponentially weighted average of the gradients (start at 0)"
EXP_AVG_SQ_DOC = "second moment v, an average of the squared gradients (start at 0)"


def host_sqrt(x):
    """The square root of a host scalar (``math.sqrt``, correctly rounded), or of a device
    array's elements (a rule's scalars computed on the device from a device step count:
    see ``device_scalars`` in :class:`~fusedopt.kernels.registry.Rule`)."""
    if isinstance(x, Real):
        return math.sqrt(x)
    return x.sqrt() if hasattr(x, "sqrt") else np.sqrt(x)  # a torch tensor, or NumPy's


def weight_decay_split(lr: float, weight_decay: float, decoupled: bool) -> tuple[float, float]:
    """(param_scale, coupled_decay): AdamW shrinks the parameter, Adam adds to the gradient.

    A decoupled ``lr * weight_decay`` above 1 would flip every parameter's sign each step
    (and grow it without bound): a :class:`~fusedopt.backends.base.ScalarRangeError`. A
    device learning rate (a capturable step's) cannot be compared on the host without a
    sync: it was checked when its group was set up.
    """
    if not decoupled:
        return 1.0, weight_decay
    if isinstance(lr, Real) and lr * weight_decay > 1.0:
        raise ScalarRangeError(f"lr * weight_decay = {lr * weight_decay!r} is above 1: the "
                               "decoupled decay 1 - lr*weight_decay would flip the parameters' "
                               "sign; use lr * weight_decay <= 1")
    return 1.0 - lr * weight_decay, 0.0


def adam_like_torch(name_if_decoupled: str, name: str, **extra):
    def equivalent(h: dict):
        if not h.get("bias_correction", True):
            return None
        return (name_if_decoupled if h["decoupled_weight_decay"] else name,
                dict(lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                     weight_decay=h["weight_decay"], **extra))
    return equivalent
