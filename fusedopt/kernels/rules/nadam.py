"""NAdam: Adam with Nesterov momentum (Dozat 2016), as torch.optim.NAdam."""

from __future__ import annotations

import threading
from math import sqrt as _host_sqrt

from fusedopt.kernels.language import sqrt
from fusedopt.kernels.registry import GRAD_DOC, GRAD_SCALE, PARAM_DOC, real, register
from fusedopt.kernels.rules._common import (
    BETA1,
    BETA2,
    DECOUPLED,
    EPS,
    EXP_AVG_DOC,
    EXP_AVG_SQ_DOC,
    LR_DOC,
    WEIGHT_DECAY,
    weight_decay_split,
)

# -------------------------------------------------------------------------- NAdam
_MARK_EVERY = 1024  # steps between the products kept, so any step is < 1024 products away
_MU_PRODUCTS: dict[tuple[float, float], tuple[list[float], int, float]] = {}
_MU_LOCK = threading.Lock()


def nadam_mu(beta1: float, momentum_decay: float, step: int) -> float:
    r"""The momentum coefficient :math:`\mu_t = \beta_1 (1 - \frac12 0.96^{t\psi})` (Dozat 2016)."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def nadam_mu_product(beta1: float, momentum_decay: float, step: int) -> float:
    r""":math:`\prod_{i=1}^{t} \mu_i`, multiplied in order as torch does (bit-identical).

    Memoised per (beta1, momentum_decay): the next step costs one multiplication;
    any other step (a resumed run, another optimizer with the same betas at another
    step) starts from the nearest kept product below it, every 1024 steps. The
    products are always the same left-to-right sequence, so a resumed run equals an
    unbroken one.
    """
    key = (beta1, momentum_decay)
    with _MU_LOCK:
        marks, last_step, last = _MU_PRODUCTS.get(key, ([1.0], 0, 1.0))
        if step == last_step:
            return last
        if step < last_step or step > last_step + _MARK_EVERY:
            mark = min(step // _MARK_EVERY, len(marks) - 1)
            last_step, last = mark * _MARK_EVERY, marks[mark]
        for t in range(last_step + 1, step + 1):
            last *= nadam_mu(beta1, momentum_decay, t)
            if t % _MARK_EVERY == 0 and t // _MARK_EVERY == len(marks):
                marks.append(last)
        _MU_PRODUCTS[key] = (marks, step, last)
    return last


def nadam_scalars(*, step: int, lr: float, beta1: float, beta2: float, eps: float,
                  weight_decay: float, momentum_decay: float, decoupled_weight_decay: bool,
                  grad_scale: float) -> tuple[float, ...]:
    """Host scalars of :func:`nadam`: the two Nesterov coefficients, from ``step``."""
    mu = nadam_mu(beta1, momentum_decay, step)
    mu_next = nadam_mu(beta1, momentum_decay, step + 1)
    mu_product = nadam_mu_product(beta1, momentum_decay, step)
    grad_coef = lr * (1.0 - mu) / (1.0 - mu_product)
    exp_avg_coef = lr * mu_next / (1.0 - mu_product * mu_next)
    param_scale, coupled_decay = weight_decay_split(lr, weight_decay, decoupled_weight_decay)
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
