"""The functional API: one fused, in-place pass over memory per call.

Each function checks all of its input first (nothing is written if anything is
wrong), computes the step's scalars once on the host in float64, and runs the
rule of :mod:`fusedopt.kernels.rules` on the backend that owns the arrays.
"""

from __future__ import annotations

import numpy as np

from fusedopt import _checks
from fusedopt.kernels.rules import RULES

_SGD, _MOMENTUM, _RMSPROP, _ADAM, _EWA = (RULES[n] for n in
                                          ("sgd", "momentum", "rmsprop", "adam", "ewa"))


# Hyperparameter checks, one per rule: the values as a dict for the rule's host scalars, or
# an error naming the argument. Shared by the functions below and the stateful optimizers.
def check_sgd(f: str, *, lr, weight_decay=0.0, grad_scale=1.0) -> dict:
    return dict(lr=_checks.real(f, "lr", lr, 0.0),
                weight_decay=_checks.real(f, "weight_decay", weight_decay, 0.0),
                grad_scale=_checks.real(f, "grad_scale", grad_scale))


def check_momentum(f: str, *, lr, beta=0.9, dampening=None, nesterov=False, weight_decay=0.0,
                   grad_scale=1.0) -> dict:
    return dict(
        lr=_checks.real(f, "lr", lr, 0.0),
        beta=_checks.beta(f, "beta", beta),
        dampening=None if dampening is None else _checks.real(f, "dampening", dampening, 0, 1),
        nesterov=_checks.flag(f, "nesterov", nesterov),
        weight_decay=_checks.real(f, "weight_decay", weight_decay, 0.0),
        grad_scale=_checks.real(f, "grad_scale", grad_scale),
    )


def check_rmsprop(f: str, *, lr, beta=0.99, eps=1e-8, weight_decay=0.0, grad_scale=1.0) -> dict:
    return dict(lr=_checks.real(f, "lr", lr, 0.0), beta=_checks.beta(f, "beta", beta),
                eps=_checks.real(f, "eps", eps, 0.0),
                weight_decay=_checks.real(f, "weight_decay", weight_decay, 0.0),
                grad_scale=_checks.real(f, "grad_scale", grad_scale))


def check_adam(f: str, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
               decoupled_weight_decay=False, bias_correction=True, grad_scale=1.0) -> dict:
    return dict(
        step=_checks.step(f, step),
        lr=_checks.real(f, "lr", lr, 0.0),
        beta1=_checks.beta(f, "beta1", beta1),
        beta2=_checks.beta(f, "beta2", beta2),
        eps=_checks.real(f, "eps", eps, 0.0),
        weight_decay=_checks.real(f, "weight_decay", weight_decay, 0.0),
        decoupled_weight_decay=_checks.flag(f, "decoupled_weight_decay", decoupled_weight_decay),
        bias_correction=_checks.flag(f, "bias_correction", bias_correction),
        grad_scale=_checks.real(f, "grad_scale", grad_scale),
    )


def sgd_(param, grad, *, lr: float, weight_decay: float = 0.0, grad_scale: float = 1.0,
         backend: str | None = None) -> None:
    r"""Gradient descent step, in place.

    .. math::  g = \nabla + \lambda\theta, \qquad \theta \leftarrow \theta - \alpha g

    Args:
        param: parameters, updated in place (float32 or float64, C-contiguous).
        grad: gradient of the cost with respect to ``param``, same shape and dtype.
        lr: learning rate :math:`\alpha \ge 0`.
        weight_decay: L2 coefficient :math:`\lambda \ge 0`, added to the gradient.
        grad_scale: the gradient is used as ``grad * grad_scale`` (a clip factor, or
            1/loss-scale), at no extra pass over memory.
        backend: ``None`` (by array type), ``"numba"``, ``"cupy"`` or ``"numpy"``.

    Raises:
        TypeError, ValueError: bad input, named; nothing is changed.
    """
    f = "sgd_"
    hyper = check_sgd(f, lr=lr, weight_decay=weight_decay, grad_scale=grad_scale)
    impl, arrays = _checks.arrays(f, _SGD.arrays, (param, grad), _SGD.writes, backend)
    impl.update(_SGD, arrays, hyper)


def momentum_(param, grad, velocity, *, lr: float, beta: float = 0.9,
              dampening: float | None = None, nesterov: bool = False,
              weight_decay: float = 0.0, grad_scale: float = 1.0,
              backend: str | None = None) -> None:
    r"""Gradient descent with momentum, in place (param and velocity in one pass).

    .. math::
        g = \nabla + \lambda\theta,\quad v \leftarrow \beta v + (1-d)\,g,\quad
        \theta \leftarrow \theta - \alpha\,(g + \beta v \text{ if nesterov else } v)

    Args:
        param: parameters, updated in place.
        grad: gradient, same shape and dtype.
        velocity: the momentum buffer :math:`v` (start at zeros), updated in place.
        lr: learning rate :math:`\alpha \ge 0`.
        beta: momentum :math:`\beta \in [0, 1)`.
        dampening: :math:`d \in [0, 1]`. ``None`` (default) is the lecture's form,
            ``d = beta``: ``v`` is an exponentially weighted average of the gradients.
            ``0`` is torch.optim.SGD(momentum=beta) (with ``v`` starting at zero).
        nesterov: Nesterov's variant, :math:`\theta \leftarrow \theta - \alpha(g + \beta v)`.
        weight_decay: L2 coefficient added to the gradient.
        grad_scale: the gradient is used as ``grad * grad_scale`` (see :func:`sgd_`).
        backend: ``None`` (by array type), ``"numba"``, ``"cupy"`` or ``"numpy"``.
    """
    f = "momentum_"
    hyper = check_momentum(f, lr=lr, beta=beta, dampening=dampening, nesterov=nesterov,
                           weight_decay=weight_decay, grad_scale=grad_scale)
    impl, arrays = _checks.arrays(f, _MOMENTUM.arrays, (param, grad, velocity),
                                  _MOMENTUM.writes, backend)
    impl.update(_MOMENTUM, arrays, hyper)


def rmsprop_(param, grad, sq_avg, *, lr: float, beta: float = 0.99, eps: float = 1e-8,
             weight_decay: float = 0.0, grad_scale: float = 1.0,
             backend: str | None = None) -> None:
    r"""RMSprop step, in place (param and sq_avg in one pass).

    .. math::
        g = \nabla + \lambda\theta,\quad s \leftarrow \beta s + (1-\beta)\,g^2,\quad
        \theta \leftarrow \theta - \alpha\, g / (\sqrt{s} + \epsilon)

    Equals torch.optim.RMSprop(alpha=beta) (``eps`` outside the square root).

    Args:
        param: parameters, updated in place.
        grad: gradient, same shape and dtype.
        sq_avg: the running average of squared gradients :math:`s` (start at zeros).
        lr: learning rate :math:`\alpha \ge 0`.
        beta: decay :math:`\beta \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`, added to :math:`\sqrt{s}`.
        weight_decay: L2 coefficient added to the gradient.
        backend: ``None`` (by array type), ``"numba"``, ``"cupy"`` or ``"numpy"``.
    """
    f = "rmsprop_"
    hyper = check_rmsprop(f, lr=lr, beta=beta, eps=eps, weight_decay=weight_decay,
                          grad_scale=grad_scale)
    impl, arrays = _checks.arrays(f, _RMSPROP.arrays, (param, grad, sq_avg),
                                  _RMSPROP.writes, backend)
    impl.update(_RMSPROP, arrays, hyper)


def adam_(param, grad, exp_avg, exp_avg_sq, *, step: int, lr: float = 1e-3,
          beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
          bias_correction: bool = True, grad_scale: float = 1.0,
          backend: str | None = None) -> None:
    r"""Adam (or AdamW) step, in place: param and both moments in one pass.

    .. math::
        g &= \nabla + \lambda\theta \quad(\text{AdamW: } g = \nabla,\;
             \theta \leftarrow \theta(1-\alpha\lambda)) \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \alpha\,\frac{m/(1-\beta_1^t)}{\sqrt{v/(1-\beta_2^t)}+\epsilon}

    Algorithm 1 of Kingma & Ba: ``eps`` outside the square root, after bias
    correction, as torch.optim.Adam/AdamW, Apex, DeepSpeed and optax (TF/Keras
    differ). The bias corrections are computed in float64 on the host and
    folded into the step size.

    Args:
        param: parameters, updated in place.
        grad: gradient, same shape and dtype.
        exp_avg: first moment :math:`m` (start at zeros), updated in place.
        exp_avg_sq: second moment :math:`v` (start at zeros), updated in place.
        step: :math:`t`, the 1-based count of this update (the first call uses 1).
        lr: learning rate :math:`\alpha \ge 0`.
        beta1: :math:`\beta_1 \in [0, 1)`.
        beta2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        weight_decay: :math:`\lambda \ge 0`.
        decoupled_weight_decay: AdamW (Loshchilov & Hutter) when True.
        bias_correction: divide by :math:`1-\beta^t` (True, default) or not.
        grad_scale: the gradient is used as ``grad * grad_scale`` (see :func:`sgd_`).
        backend: ``None`` (by array type), ``"numba"``, ``"cupy"`` or ``"numpy"``.
    """
    f = "adam_"
    hyper = check_adam(f, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                       weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                       bias_correction=bias_correction, grad_scale=grad_scale)
    impl, arrays = _checks.arrays(f, _ADAM.arrays, (param, grad, exp_avg, exp_avg_sq),
                                  _ADAM.writes, backend)
    impl.update(_ADAM, arrays, hyper)


def adamw_(param, grad, exp_avg, exp_avg_sq, *, step: int, lr: float = 1e-3,
           beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
           weight_decay: float = 1e-2, bias_correction: bool = True, grad_scale: float = 1.0,
           backend: str | None = None) -> None:
    r"""AdamW step, in place: :func:`adam_` with ``decoupled_weight_decay=True``.

    .. math::  \theta \leftarrow \theta(1-\alpha\lambda), \text{ then Adam with } g = \nabla

    ``weight_decay`` defaults to ``1e-2``, as torch.optim.AdamW.
    """
    adam_(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2,
          eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True,
          bias_correction=bias_correction, grad_scale=grad_scale, backend=backend)


def ewa_(average, value, *, beta: float, backend: str | None = None) -> None:
    r"""Exponentially weighted average, in place.

    .. math::  V_t = \beta V_{t-1} + (1-\beta)\,\theta_t

    It averages over roughly the last :math:`1/(1-\beta)` values; start from
    zeros and use :func:`debias` for the early steps.
    """
    f = "ewa_"
    hyper = dict(beta=_checks.beta(f, "beta", beta))
    impl, arrays = _checks.arrays(f, _EWA.arrays, (average, value), _EWA.writes, backend)
    impl.update(_EWA, arrays, hyper)


def debias(average, *, beta: float, step: int):
    r"""Bias-corrected copy of an exponentially weighted average started at zero.

    .. math::  \hat V_t = V_t / (1 - \beta^t)

    Returns a new array of the same type (a float32 or float64 array keeps its dtype;
    integer arrays give float64); ``average`` is not changed.
    """
    f = "debias"
    beta = _checks.beta(f, "beta", beta)
    step = _checks.step(f, step)
    kind = _checks.array_kind(average)
    if kind not in ("numpy", "cupy"):
        if kind == "other" and isinstance(average, (int, float, np.floating)) \
                and not isinstance(average, bool):
            return average / (1.0 - beta**step)
        raise TypeError(f"{f}: average must be a NumPy or CuPy array or a number, not "
                        f"{type(average).__name__}")
    # A Python float keeps the array's dtype (NEP 50), so float32 stays float32.
    return average * (1.0 / (1.0 - beta**step))
