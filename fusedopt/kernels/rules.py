"""The update rules, written once: plain Python functions on scalars.

Every backend runs these functions and nothing else: the Numba backend inlines
them into its loops, the CUDA backend translates their source into CUDA C++.
Changing a rule here changes every backend, so the backends cannot drift apart.

Each rule comes in two parts:

* the **element rule** (``adam``, ``momentum``, ...): the arithmetic for one
  element. Its leading arguments are array elements (named after the state they
  hold), the rest are per-step scalars; it returns the new values of the arrays
  it writes, in order. It uses only arithmetic, comparisons, conditional
  expressions and ``sqrt`` so that it translates to CUDA C++ directly.
* the **host scalars** (``adam_scalars``, ...): the per-step numbers the element
  rule needs, computed once per call on the host in float64 from the public
  hyperparameters (learning rate, bias corrections, ``1 - beta``), so the
  per-element work is as small as it can be and float32 math stays float32
  (no Python literals inside the element rules, which would promote to float64
  in Numba).

Formulations, stated once (they match torch.optim, Apex, DeepSpeed and optax):

* Adam puts ``eps`` outside the square root, after bias correction
  (Algorithm 1 of Kingma & Ba), and folds the bias corrections into the step
  size: ``param -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)``.
* Momentum defaults to the lecture's exponentially weighted average
  ``v = beta*v + (1-beta)*g``; ``dampening=0`` gives torch's ``v = beta*v + g``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from math import sqrt


@dataclass(frozen=True)
class Rule:
    """An element rule and what it touches."""

    name: str
    element: Callable[..., tuple]
    host_scalars: Callable[..., tuple[float, ...]]  # returns the scalars, in order
    arrays: tuple[str, ...]  # per-element arguments, in order
    writes: tuple[str, ...]  # arrays the rule returns new values for, in order
    scalars: tuple[str, ...]  # per-step scalar arguments, in order

    @property
    def bytes_per_element_factor(self) -> int:
        """Streams moved per element: every array read once, written ones written once."""
        return len(self.arrays) + len(self.writes)


RULES: dict[str, Rule] = {}


def _rule(arrays: tuple[str, ...], writes: tuple[str, ...], host_scalars: Callable):
    def register(element: Callable) -> Callable:
        params = tuple(inspect.signature(element).parameters)
        if params[: len(arrays)] != arrays or not set(writes) <= set(arrays):
            raise AssertionError(f"rule {element.__name__}: arrays {arrays} must lead {params}")
        scalars = params[len(arrays) :]
        RULES[element.__name__] = Rule(
            element.__name__, element, host_scalars, arrays, writes, scalars
        )
        return element

    return register


# --------------------------------------------------------------------------- SGD
def sgd_scalars(*, lr: float, weight_decay: float, grad_scale: float = 1.0) -> tuple[float, ...]:
    """Host scalars of :func:`sgd`."""
    return (grad_scale, lr, weight_decay)


@_rule(arrays=("param", "grad"), writes=("param",), host_scalars=sgd_scalars)
def sgd(param, grad, grad_scale, lr, weight_decay):
    r"""Plain (stochastic, mini-batch or batch) gradient descent.

    .. math::  g = s\nabla + \lambda\,\theta, \qquad \theta \leftarrow \theta - \alpha\, g

    ``grad_scale`` (:math:`s`) carries a clip factor or an inverse loss scale
    into the same pass (1 otherwise).
    """
    g = grad * grad_scale + weight_decay * param
    return (param - lr * g,)


# ---------------------------------------------------------------------- Momentum
def momentum_scalars(
    *, lr: float, beta: float, dampening: float | None, weight_decay: float, nesterov: bool,
    grad_scale: float = 1.0,
) -> tuple[float, ...]:
    """Host scalars of :func:`momentum`; ``dampening=None`` is the lecture's ``beta``."""
    d = beta if dampening is None else dampening
    return (grad_scale, lr, beta, 1.0 - d, weight_decay, 1.0 if nesterov else 0.0)


@_rule(arrays=("param", "grad", "velocity"), writes=("param", "velocity"),
       host_scalars=momentum_scalars)
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
    g = grad * grad_scale + weight_decay * param
    velocity = beta * velocity + one_minus_dampening * g
    update = g + beta * velocity if nesterov else velocity
    return param - lr * update, velocity


# ----------------------------------------------------------------------- RMSprop
def rmsprop_scalars(
    *, lr: float, beta: float, eps: float, weight_decay: float, grad_scale: float = 1.0
) -> tuple[float, ...]:
    """Host scalars of :func:`rmsprop`."""
    return (grad_scale, lr, beta, 1.0 - beta, eps, weight_decay)


@_rule(arrays=("param", "grad", "sq_avg"), writes=("param", "sq_avg"),
       host_scalars=rmsprop_scalars)
def rmsprop(param, grad, sq_avg, grad_scale, lr, beta, one_minus_beta, eps, weight_decay):
    r"""Root mean square propagation.

    .. math::
        g = c\nabla + \lambda\theta,\quad
        s \leftarrow \beta s + (1-\beta) g^2,\quad
        \theta \leftarrow \theta - \alpha\, g / (\sqrt{s} + \epsilon)

    ``eps`` outside the square root, as torch.optim.RMSprop (``alpha=beta``);
    :math:`c` is ``grad_scale``.
    """
    g = grad * grad_scale + weight_decay * param
    sq_avg = beta * sq_avg + one_minus_beta * g * g
    return param - lr * g / (sqrt(sq_avg) + eps), sq_avg


# -------------------------------------------------------------------------- Adam
def adam_scalars(
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    bias_correction: bool,
    grad_scale: float = 1.0,
) -> tuple[float, ...]:
    """Host scalars of :func:`adam`, in float64: bias corrections folded into the step size."""
    if bias_correction:
        bc1 = 1.0 - beta1**step
        bc2 = 1.0 - beta2**step
    else:
        bc1 = bc2 = 1.0
    if decoupled_weight_decay:  # AdamW: shrink the parameter, leave the gradient alone
        param_scale, coupled_decay = 1.0 - lr * weight_decay, 0.0
    else:
        param_scale, coupled_decay = 1.0, weight_decay
    return (grad_scale, beta1, 1.0 - beta1, beta2, 1.0 - beta2, lr / bc1, 1.0 / sqrt(bc2), eps,
            coupled_decay, param_scale)


@_rule(arrays=("param", "grad", "exp_avg", "exp_avg_sq"),
       writes=("param", "exp_avg", "exp_avg_sq"), host_scalars=adam_scalars)
def adam(param, grad, exp_avg, exp_avg_sq, grad_scale, beta1, one_minus_beta1, beta2,
         one_minus_beta2, step_size, inv_sqrt_bc2, eps, weight_decay, param_scale):
    r"""Adam, and AdamW by decoupled weight decay.

    .. math::
        \theta &\leftarrow \theta\,(1 - \alpha\lambda_{\mathrm{decoupled}}) \\
        g &= s\nabla + \lambda_{\mathrm{coupled}}\,\theta \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \frac{\alpha}{1-\beta_1^t}\,
                 \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    ``eps`` is outside the square root and after bias correction (Kingma & Ba,
    torch, optax); the bias corrections are folded into ``step_size`` and
    ``inv_sqrt_bc2`` on the host; :math:`s` is ``grad_scale`` (a clip factor or
    an inverse loss scale, 1 otherwise).
    """
    param = param * param_scale
    g = grad * grad_scale + weight_decay * param
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    denom = sqrt(exp_avg_sq) * inv_sqrt_bc2 + eps
    return param - step_size * exp_avg / denom, exp_avg, exp_avg_sq


# -------------------------------------------------- exponentially weighted average
def ewa_scalars(*, beta: float) -> tuple[float, ...]:
    """Host scalars of :func:`ewa`."""
    return (beta, 1.0 - beta)


@_rule(arrays=("average", "value"), writes=("average",), host_scalars=ewa_scalars)
def ewa(average, value, beta, one_minus_beta):
    r"""Exponentially weighted (moving) average, the building block of the others.

    .. math::  V_t = \beta V_{t-1} + (1-\beta)\,\theta_t
    """
    return (beta * average + one_minus_beta * value,)
