"""The update rules, written once: plain Python functions on scalars, and their registry entries.

Every backend runs these functions and nothing else: the Numba backend inlines
them into its loops, the CUDA backend translates their source into CUDA C++.
Changing a rule here changes every backend, so the backends cannot drift apart.

Each rule has three parts:

* the **element rule** (``adam``, ``momentum``, ...): the arithmetic for one
  element, in the rule language (:mod:`fusedopt.kernels.language`). Its
  leading arguments are array elements (named after the state they hold), the
  rest are per-step scalars; it returns the new values of the arrays it writes.
* the **host scalars** (``adam_scalars``, ...): the per-step numbers the element
  rule needs, computed once per call on the host in float64 from the public
  hyperparameters (learning rate, bias corrections, ``1 - beta``), so the
  per-element work is as small as it can be.
* the **registration** (:func:`~fusedopt.kernels.registry.register`): arrays,
  hyperparameters with defaults, ranges and docs, step, typical learning rate,
  optimizer class, torch equivalent. Every surface of fusedopt derives from it.

Formulations, stated once (they match torch.optim, Apex, DeepSpeed and optax):

* Adam puts ``eps`` outside the square root, after bias correction
  (Algorithm 1 of Kingma & Ba), and folds the bias corrections into the step
  size: ``param -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)``.
* Momentum defaults to the lecture's exponentially weighted average
  ``v = beta*v + (1-beta)*g``; ``dampening=0`` gives torch's ``v = beta*v + g``.
"""

from __future__ import annotations

import threading
from math import sqrt as _host_sqrt

from fusedopt.kernels.language import sign, sqrt
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
    variant,
)

# Hyperparameters several rules share.
LR_DOC = "learning rate alpha"
WEIGHT_DECAY = real("weight_decay", 0.0, "L2 coefficient lambda, added to the gradient",
                    symbol=r"\lambda")
EPS = real("eps", 1e-8, "added to the denominator's square root", symbol=r"\epsilon")
BETA1 = beta("beta1", 0.9, "decay of the first moment", r"\beta_1")
BETA2 = beta("beta2", 0.999, "decay of the second moment", r"\beta_2")
DECOUPLED = flag("decoupled_weight_decay", False,
                 "AdamW-style: shrink the parameter by (1 - lr*weight_decay) instead of adding "
                 "weight_decay*param to the gradient")
BIAS_CORRECTION = flag("bias_correction", True, "divide the moments by 1 - beta**step")
EXP_AVG_DOC = "first moment m, an exponentially weighted average of the gradients (start at 0)"
EXP_AVG_SQ_DOC = "second moment v, an average of the squared gradients (start at 0)"


def _weight_decay_split(lr: float, weight_decay: float, decoupled: bool) -> tuple[float, float]:
    """(param_scale, coupled_decay): AdamW shrinks the parameter, Adam adds to the gradient."""
    return (1.0 - lr * weight_decay, 0.0) if decoupled else (1.0, weight_decay)


def _adam_like_torch(name_if_decoupled: str, name: str, **extra):
    def equivalent(h: dict):
        if not h.get("bias_correction", True):
            return None
        return (name_if_decoupled if h["decoupled_weight_decay"] else name,
                dict(lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                     weight_decay=h["weight_decay"], **extra))
    return equivalent


# --------------------------------------------------------------------------- SGD
def sgd_scalars(*, lr: float, weight_decay: float, grad_scale: float) -> tuple[float, ...]:
    """Host scalars of :func:`sgd`."""
    return (grad_scale, lr, weight_decay)


@register(arrays={"param": PARAM_DOC, "grad": GRAD_DOC}, writes=("param",),
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
    g = grad * grad_scale + weight_decay * param
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


@register(arrays={"param": PARAM_DOC, "grad": GRAD_DOC,
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
    g = grad * grad_scale + weight_decay * param
    velocity = beta * velocity + one_minus_dampening * g
    update = g + beta * velocity if nesterov else velocity
    return param - lr * update, velocity


# ----------------------------------------------------------------------- RMSprop
def rmsprop_scalars(*, lr: float, beta: float, eps: float, weight_decay: float,
                    grad_scale: float) -> tuple[float, ...]:
    """Host scalars of :func:`rmsprop`."""
    return (grad_scale, lr, beta, 1.0 - beta, eps, weight_decay)


@register(arrays={"param": PARAM_DOC, "grad": GRAD_DOC,
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
    g = grad * grad_scale + weight_decay * param
    sq_avg = beta * sq_avg + one_minus_beta * g * g
    return param - lr * g / (sqrt(sq_avg) + eps), sq_avg


# -------------------------------------------------------------------------- Adam
def adam_scalars(*, step: int, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, decoupled_weight_decay: bool, bias_correction: bool,
                 grad_scale: float) -> tuple[float, ...]:
    """Host scalars of :func:`adam` and :func:`amsgrad`, in float64: bias corrections folded
    into the step size."""
    if bias_correction:
        bc1 = 1.0 - beta1**step
        bc2 = 1.0 - beta2**step
    else:
        bc1 = bc2 = 1.0
    param_scale, coupled_decay = _weight_decay_split(lr, weight_decay, decoupled_weight_decay)
    return (grad_scale, beta1, 1.0 - beta1, beta2, 1.0 - beta2, lr / bc1, 1.0 / _host_sqrt(bc2),
            eps, coupled_decay, param_scale)


ADAM_HYPER = (real("lr", 1e-3, LR_DOC, symbol=r"\alpha"), BETA1, BETA2, EPS, WEIGHT_DECAY,
              DECOUPLED, BIAS_CORRECTION, GRAD_SCALE)


@register(arrays={"param": PARAM_DOC, "grad": GRAD_DOC, "exp_avg": EXP_AVG_DOC,
                  "exp_avg_sq": EXP_AVG_SQ_DOC},
          writes=("param", "exp_avg", "exp_avg_sq"), host_scalars=adam_scalars,
          hyper=ADAM_HYPER, needs_step=True, typical_lr=1e-2, nonnegative=("exp_avg_sq",),
          optimizer="Adam", torch_equivalent=_adam_like_torch("AdamW", "Adam"))
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


variant("adamw", of="adam", fixed={"decoupled_weight_decay": True},
        defaults={"weight_decay": 1e-2}, optimizer="AdamW",
        doc=r"""AdamW (Loshchilov & Hutter): Adam with decoupled weight decay.

    .. math::  \theta \leftarrow \theta(1-\alpha\lambda), \text{ then Adam with } g = \nabla

    ``weight_decay`` defaults to ``1e-2``, as torch.optim.AdamW.
    """)


# ----------------------------------------------------------------------- AMSGrad
@register(arrays={"param": PARAM_DOC, "grad": GRAD_DOC, "exp_avg": EXP_AVG_DOC,
                  "exp_avg_sq": EXP_AVG_SQ_DOC,
                  "max_exp_avg_sq": "the largest second moment so far (start at 0)"},
          writes=("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), host_scalars=adam_scalars,
          hyper=ADAM_HYPER, needs_step=True, typical_lr=1e-2,
          nonnegative=("exp_avg_sq", "max_exp_avg_sq"), switch_of=("adam", "amsgrad"),
          torch_equivalent=_adam_like_torch("AdamW", "Adam", amsgrad=True))
def amsgrad(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, grad_scale, beta1,
            one_minus_beta1, beta2, one_minus_beta2, step_size, inv_sqrt_bc2, eps, weight_decay,
            param_scale):
    r"""AMSGrad (Reddi et al. 2018): Adam whose denominator never shrinks.

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g,\quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
        \hat v \leftarrow \max(\hat v, v) \\
        \theta \leftarrow \theta - \frac{\alpha}{1-\beta_1^t}\,
                 \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    As torch.optim.Adam(amsgrad=True): the maximum is of the raw second
    moments, bias-corrected afterwards; weight decay as in :func:`adam`.
    """
    param = param * param_scale
    g = grad * grad_scale + weight_decay * param
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)
    denom = sqrt(max_exp_avg_sq) * inv_sqrt_bc2 + eps
    return param - step_size * exp_avg / denom, exp_avg, exp_avg_sq, max_exp_avg_sq


# -------------------------------------------------------------------------- NAdam
_MU_PRODUCTS: dict[tuple[float, float], tuple[int, float]] = {}
_MU_LOCK = threading.Lock()


def nadam_mu(beta1: float, momentum_decay: float, step: int) -> float:
    r"""The momentum coefficient :math:`\mu_t = \beta_1 (1 - \frac12 0.96^{t\psi})` (Dozat 2016)."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def nadam_mu_product(beta1: float, momentum_decay: float, step: int) -> float:
    r""":math:`\prod_{i=1}^{t} \mu_i`, multiplied in order as torch does (bit-identical).

    Memoised per (beta1, momentum_decay): the next step costs one multiplication;
    another step (a resumed run) recomputes the product from the start, in the
    same order, so a resumed run equals an unbroken one.
    """
    key = (beta1, momentum_decay)
    with _MU_LOCK:
        cached_step, product = _MU_PRODUCTS.get(key, (0, 1.0))
        if step < cached_step:
            cached_step, product = 0, 1.0
        for t in range(cached_step + 1, step + 1):
            product *= nadam_mu(beta1, momentum_decay, t)
        _MU_PRODUCTS[key] = (step, product)
    return product


def nadam_scalars(*, step: int, lr: float, beta1: float, beta2: float, eps: float,
                  weight_decay: float, momentum_decay: float, decoupled_weight_decay: bool,
                  grad_scale: float) -> tuple[float, ...]:
    """Host scalars of :func:`nadam`: the two Nesterov coefficients, from ``step``."""
    mu = nadam_mu(beta1, momentum_decay, step)
    mu_next = nadam_mu(beta1, momentum_decay, step + 1)
    mu_product = nadam_mu_product(beta1, momentum_decay, step)
    grad_coef = lr * (1.0 - mu) / (1.0 - mu_product)
    exp_avg_coef = lr * mu_next / (1.0 - mu_product * mu_next)
    param_scale, coupled_decay = _weight_decay_split(lr, weight_decay, decoupled_weight_decay)
    return (grad_scale, beta1, 1.0 - beta1, beta2, 1.0 - beta2, grad_coef, exp_avg_coef,
            1.0 / _host_sqrt(1.0 - beta2**step), eps, coupled_decay, param_scale)


@register(arrays={"param": PARAM_DOC, "grad": GRAD_DOC, "exp_avg": EXP_AVG_DOC,
                  "exp_avg_sq": EXP_AVG_SQ_DOC},
          writes=("param", "exp_avg", "exp_avg_sq"), host_scalars=nadam_scalars,
          hyper=(real("lr", 2e-3, LR_DOC, symbol=r"\alpha"), BETA1, BETA2, EPS, WEIGHT_DECAY,
                 real("momentum_decay", 4e-3, "psi, how fast mu_t approaches beta1 "
                      "(Dozat's 0.004)", symbol=r"\psi"),
                 DECOUPLED, GRAD_SCALE),
          needs_step=True, typical_lr=1e-2, nonnegative=("exp_avg_sq",), optimizer="NAdam",
          torch_equivalent=lambda h: ("NAdam", dict(
              lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
              weight_decay=h["weight_decay"], momentum_decay=h["momentum_decay"],
              decoupled_weight_decay=h["decoupled_weight_decay"])))
def nadam(param, grad, exp_avg, exp_avg_sq, grad_scale, beta1, one_minus_beta1, beta2,
          one_minus_beta2, grad_coef, exp_avg_coef, inv_sqrt_bc2, eps, weight_decay,
          param_scale):
    r"""NAdam (Dozat 2016): Adam with Nesterov momentum, as torch.optim.NAdam.

    .. math::
        \mu_t &= \beta_1\,(1 - \tfrac12\, 0.96^{t\psi}), \qquad
        m \leftarrow \beta_1 m + (1-\beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \alpha\,\Big(
            \frac{1-\mu_t}{1-\prod_{i\le t}\mu_i}\, g
          + \frac{\mu_{t+1}}{1-\prod_{i\le t+1}\mu_i}\, m \Big)
          \Big/ \Big(\sqrt{v/(1-\beta_2^t)} + \epsilon\Big)

    The two coefficients (``grad_coef``, ``exp_avg_coef``, with :math:`\alpha`
    folded in) are host scalars computed from ``step``; weight decay as in
    :func:`adam` (``decoupled_weight_decay=True`` is NAdamW).
    """
    param = param * param_scale
    g = grad * grad_scale + weight_decay * param
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    denom = sqrt(exp_avg_sq) * inv_sqrt_bc2 + eps
    return param - (grad_coef * g + exp_avg_coef * exp_avg) / denom, exp_avg, exp_avg_sq


# --------------------------------------------------------------------------- Lion
def lion_scalars(*, lr: float, beta1: float, beta2: float, weight_decay: float,
                 grad_scale: float) -> tuple[float, ...]:
    """Host scalars of :func:`lion`."""
    return (grad_scale, lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0 - lr * weight_decay)


@register(arrays={"param": PARAM_DOC, "grad": GRAD_DOC,
                  "exp_avg": "momentum m, an average of the gradients (start at 0)"},
          writes=("param", "exp_avg"), host_scalars=lion_scalars,
          hyper=(real("lr", 1e-4, LR_DOC, symbol=r"\alpha"),
                 beta("beta1", 0.9, "weight of the momentum in the step's direction",
                      r"\beta_1"),
                 beta("beta2", 0.99, "decay of the momentum", r"\beta_2"),
                 real("weight_decay", 0.0, "decoupled: the parameter shrinks by "
                      "(1 - lr*weight_decay)", symbol=r"\lambda"),
                 GRAD_SCALE),
          typical_lr=1e-3, optimizer="Lion")
def lion(param, grad, exp_avg, grad_scale, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
         param_scale):
    r"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    .. math::
        c = \beta_1 m + (1-\beta_1) g,\quad
        \theta \leftarrow \theta\,(1-\alpha\lambda) - \alpha\,\mathrm{sign}(c),\quad
        m \leftarrow \beta_2 m + (1-\beta_2) g

    ``sign(0) = 0``. The sign moves every coordinate by ``lr`` (or not at all)
    before weight decay, so Lion's ``lr`` is typically 3-10x smaller than Adam's.
    """
    g = grad * grad_scale
    direction = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg = beta2 * exp_avg + one_minus_beta2 * g
    return param * param_scale - lr * sign(direction), exp_avg


# -------------------------------------------------- exponentially weighted average
def ewa_scalars(*, beta: float) -> tuple[float, ...]:
    """Host scalars of :func:`ewa`."""
    return (beta, 1.0 - beta)


@register(arrays={"average": "the running average V, updated in place (start at 0)",
                  "value": "this step's value theta_t; only read"},
          writes=("average",), host_scalars=ewa_scalars,
          hyper=(beta("beta", REQUIRED, "decay: it averages about the last 1/(1-beta) "
                      "values"),))
def ewa(average, value, beta, one_minus_beta):
    r"""Exponentially weighted (moving) average, the building block of the others.

    .. math::  V_t = \beta V_{t-1} + (1-\beta)\,\theta_t

    It averages over roughly the last :math:`1/(1-\beta)` values; start from
    zeros and use :func:`fusedopt.debias` for the early steps.
    """
    return (beta * average + one_minus_beta * value,)
