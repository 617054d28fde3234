"""Gradient descent, plain and with momentum: the lecture's first two rules."""

from __future__ import annotations

from fusedopt.kernels.registry import (
    GRAD_DOC,
    GRAD_SCALE,
    PARAM_DOC,
    REQUIRED,
    beta,
    flag,
    optional,
    real,
    register,
)
from fusedopt.kernels.rules._common import LR_DOC, WEIGHT_DECAY


# --------------------------------------------------------------------------- SGD
def sgd_scalars(*, lr: float, weight_decay: float, grad_scale: float) -> tuple[float, ...]:
    """Host scalars of :func:`sgd`."""
    return (grad_scale, lr, weight_decay)


@register(device_scalars=True, specialised=("grad_scale", "weight_decay"),
          arrays={"param": PARAM_DOC, "grad": GRAD_DOC}, writes=("param",),
          host_scalars=sgd_scalars,
          hyper=(real("lr", REQUIRED, LR_DOC, symbol=r"\alpha"), WEIGHT_DECAY, GRAD_SCALE),
          typical_lr=0.5, optimizer="SGD",
          torch_equivalent=lambda h: ("SGD", dict(lr=h["lr"], weight_decay=h["weight_decay"])))
def sgd(param, grad, grad_scale, lr, weight_decay):
    r"""Plain (stochastic, mini-batch or batch) gradient descent.

    .. math::  g = s\nabla + \lambda\,\theta, \qquad \theta \leftarrow \theta - \alpha\, g

    ``grad_scale`` (:math:`s`) carries a clip factor or an inverse loss scale
    into the same pass (1 otherwise).
    """
    g = grad * grad_scale
    g = g + weight_decay * param if weight_decay != 0.0 else g  # none at 0, as torch
    return (param - lr * g,)


# ---------------------------------------------------------------------- Momentum
def momentum_scalars(*, lr: float, beta: float, dampening: float | None, weight_decay: float,
                     nesterov: bool, grad_scale: float) -> tuple[float, ...]:
    """Host scalars of :func:`momentum`; ``dampening=None`` is the lecture's ``beta``."""
    d = beta if dampening is None else dampening
    return (grad_scale, lr, beta, 1.0 - d, weight_decay, 1.0 if nesterov else 0.0)


def _momentum_torch(h: dict):
    # torch starts its buffer at the first gradient, undamped: equal only with dampening 0.
    if h["dampening"] != 0.0:
        return None
    return ("SGD", dict(lr=h["lr"], momentum=h["beta"], dampening=0.0, nesterov=h["nesterov"],
                        weight_decay=h["weight_decay"]))


@register(device_scalars=True, specialised=("grad_scale", "one_minus_dampening", "nesterov",
                                                 "weight_decay"),
          arrays={"param": PARAM_DOC, "grad": GRAD_DOC,
                  "velocity": "the momentum buffer v (start at 0)"},
          writes=("param", "velocity"), host_scalars=momentum_scalars,
          hyper=(real("lr", REQUIRED, LR_DOC, symbol=r"\alpha"),
                 beta("beta", 0.9, "momentum"),
                 optional("dampening", None, "d in [0, 1]; None is the lecture's form d = beta "
                          "(v is an average of the gradients); 0 is torch.optim.SGD's momentum",
                          hi=1.0),
                 flag("nesterov", False, "Nesterov's variant: step along g + beta*v"),
                 WEIGHT_DECAY, GRAD_SCALE),
          typical_lr=0.5, optimizer="Momentum", torch_equivalent=_momentum_torch)
def momentum(param, grad, velocity, grad_scale, lr, beta, one_minus_dampening, weight_decay,
             nesterov):
    r"""Gradient descent with momentum.

    .. math::
        g = s\nabla + \lambda\theta,\quad
        v \leftarrow \beta v + (1-d)\,g,\quad
        \theta \leftarrow \theta - \alpha\,(g + \beta v \text{ if nesterov else } v)

    ``d = beta`` is the lecture's form (``v`` is an exponentially weighted
    average of the gradients); ``d = 0`` is torch.optim.SGD's ``momentum``.
    """
    g = grad * grad_scale
    g = g + weight_decay * param if weight_decay != 0.0 else g  # none at 0, as torch
    velocity = beta * velocity + one_minus_dampening * g
    update = g + beta * velocity if nesterov else velocity
    return param - lr * update, velocity
