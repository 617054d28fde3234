"""RMSprop: each coordinate's step divided by the root mean square of its gradients."""

from __future__ import annotations

from fusedopt.kernels.language import sqrt
from fusedopt.kernels.registry import (
    GRAD_DOC,
    GRAD_SCALE,
    PARAM_DOC,
    REQUIRED,
    beta,
    flag,
    real,
    register,
)
from fusedopt.kernels.rules._common import EPS, LR_DOC, WEIGHT_DECAY


# ----------------------------------------------------------------------- RMSprop
def rmsprop_scalars(*, lr: float, beta: float, eps: float, weight_decay: float,
                    grad_scale: float) -> tuple[float, ...]:
    """Host scalars of :func:`rmsprop`."""
    return (grad_scale, lr, beta, 1.0 - beta, eps, weight_decay)


@register(device_scalars=True, specialised=("grad_scale", "weight_decay"),
          arrays={"param": PARAM_DOC, "grad": GRAD_DOC,
                  "sq_avg": "running average of the squared gradients s (start at 0)"},
          writes=("param", "sq_avg"), host_scalars=rmsprop_scalars,
          hyper=(real("lr", REQUIRED, LR_DOC, symbol=r"\alpha"),
                 beta("beta", 0.99, "decay of the squared-gradient average (torch's alpha)"),
                 EPS, WEIGHT_DECAY, GRAD_SCALE),
          typical_lr=3e-3, nonnegative=("sq_avg",), optimizer="RMSprop",
          torch_equivalent=lambda h: ("RMSprop", dict(lr=h["lr"], alpha=h["beta"], eps=h["eps"],
                                                      weight_decay=h["weight_decay"])))
def rmsprop(param, grad, sq_avg, grad_scale, lr, beta, one_minus_beta, eps, weight_decay):
    r"""Root mean square propagation.

    .. math::
        g = c\nabla + \lambda\theta,\quad
        s \leftarrow \beta s + (1-\beta) g^2,\quad
        \theta \leftarrow \theta - \alpha\, g / (\sqrt{s} + \epsilon)

    ``eps`` outside the square root, as torch.optim.RMSprop (``alpha=beta``);
    :math:`c` is ``grad_scale``.
    """
    g = grad * grad_scale
    g = g + weight_decay * param if weight_decay != 0.0 else g  # none at 0, as torch
    sq_avg = beta * sq_avg + one_minus_beta * g * g
    return param - lr * g / (sqrt(sq_avg) + eps), sq_avg


# ------------------------------------------ RMSprop with momentum, and centered
def rmsprop_momentum_scalars(*, lr: float, beta: float, eps: float, weight_decay: float,
                             momentum: float, centered: bool,
                             grad_scale: float) -> tuple[float, ...]:
    """Host scalars of :func:`rmsprop_momentum`."""
    return (grad_scale, lr, beta, 1.0 - beta, eps, weight_decay, momentum,
            1.0 if centered else 0.0)


def _rmsprop_momentum_torch(h: dict):
    return ("RMSprop", dict(lr=h["lr"], alpha=h["beta"], eps=h["eps"],
                            weight_decay=h["weight_decay"], momentum=h["momentum"],
                            centered=h["centered"]))


@register(device_scalars=True, specialised=("grad_scale", "centered", "weight_decay"),
          arrays={"param": PARAM_DOC, "grad": GRAD_DOC,
                  "sq_avg": "running average of the squared gradients s (start at 0)",
                  "grad_avg": "running average of the gradients a (start at 0; centered only)",
                  "momentum_buffer": "the step's momentum buffer b (start at 0)"},
          writes=("param", "sq_avg", "grad_avg", "momentum_buffer"),
          host_scalars=rmsprop_momentum_scalars,
          hyper=(real("lr", REQUIRED, LR_DOC, symbol=r"\alpha"),
                 beta("beta", 0.99, "decay of the squared-gradient average (torch's alpha)"),
                 EPS, WEIGHT_DECAY,
                 real("momentum", 0.0, "momentum of the normalised step", symbol=r"\mu"),
                 flag("centered", False, "divide by an estimate of the variance, "
                      "s - a^2, instead of s"),
                 GRAD_SCALE),
          typical_lr=3e-3, nonnegative=("sq_avg",),
          torch_equivalent=_rmsprop_momentum_torch)
def rmsprop_momentum(param, grad, sq_avg, grad_avg, momentum_buffer, grad_scale, lr, beta,
                     one_minus_beta, eps, weight_decay, momentum, centered):
    r"""RMSprop with momentum, optionally centered: torch.optim.RMSprop's other forms.

    .. math::
        g = c\nabla + \lambda\theta,\quad
        s \leftarrow \beta s + (1-\beta) g^2,\quad
        a \leftarrow a + (1-\beta)(g - a) \text{ (centered)},\\
        b \leftarrow \mu b + g / (\sqrt{s - a^2 \text{ (centered) or } s} + \epsilon),\quad
        \theta \leftarrow \theta - \alpha b

    ``centered`` estimates the gradients' variance (Graves 2013); with ``momentum`` the
    normalised step is averaged (torch's ``momentum_buffer``). ``grad_avg`` is left as it
    is when not centered.
    """
    g = grad * grad_scale
    g = g + weight_decay * param if weight_decay != 0.0 else g  # none at 0, as torch
    sq_avg = beta * sq_avg + one_minus_beta * (g * g)  # torch's order: addcmul, then lerp,
    # which steps from the nearer end (beta = 0 gives a = g exactly, so s - a^2 = 0, not < 0)
    toward = (grad_avg + one_minus_beta * (g - grad_avg) if one_minus_beta < 0.5
              else g - (g - grad_avg) * beta)
    grad_avg = toward if centered else grad_avg
    variance = sq_avg - grad_avg * grad_avg if centered else sq_avg
    momentum_buffer = momentum * momentum_buffer + g / (sqrt(variance) + eps)
    return param - lr * momentum_buffer, sq_avg, grad_avg, momentum_buffer
