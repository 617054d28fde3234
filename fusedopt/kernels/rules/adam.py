"""Adam, its AdamW variant and AMSGrad (Adam's ``amsgrad=True`` switch)."""

from __future__ import annotations

from fusedopt.kernels.language import maximum, sqrt
from fusedopt.kernels.registry import GRAD_DOC, GRAD_SCALE, PARAM_DOC, real, register, variant
from fusedopt.kernels.rules._common import (
    BETA1,
    BETA2,
    BIAS_CORRECTION,
    DECOUPLED,
    EPS,
    EXP_AVG_DOC,
    EXP_AVG_SQ_DOC,
    LR_DOC,
    WEIGHT_DECAY,
    adam_like_torch,
    host_sqrt,
    weight_decay_split,
)


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
    param_scale, coupled_decay = weight_decay_split(lr, weight_decay, decoupled_weight_decay)
    return (grad_scale, beta1, 1.0 - beta1, beta2, 1.0 - beta2, lr / bc1, 1.0 / host_sqrt(bc2),
            eps, coupled_decay, param_scale)


ADAM_HYPER = (real("lr", 1e-3, LR_DOC, symbol=r"\alpha"), BETA1, BETA2, EPS, WEIGHT_DECAY,
              DECOUPLED, BIAS_CORRECTION, GRAD_SCALE)


@register(device_scalars=True, specialised=("grad_scale", "param_scale", "weight_decay"),
          arrays={"param": PARAM_DOC, "grad": GRAD_DOC, "exp_avg": EXP_AVG_DOC,
                  "exp_avg_sq": EXP_AVG_SQ_DOC},
          writes=("param", "exp_avg", "exp_avg_sq"), host_scalars=adam_scalars,
          hyper=ADAM_HYPER, needs_step=True, typical_lr=1e-2, nonnegative=("exp_avg_sq",),
          optimizer="Adam", torch_equivalent=adam_like_torch("AdamW", "Adam"))
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
    g = grad * grad_scale
    g = g + weight_decay * param if weight_decay != 0.0 else g  # none at 0, as torch
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
@register(device_scalars=True, specialised=("grad_scale", "param_scale", "weight_decay"),
          arrays={"param": PARAM_DOC, "grad": GRAD_DOC, "exp_avg": EXP_AVG_DOC,
                  "exp_avg_sq": EXP_AVG_SQ_DOC,
                  "max_exp_avg_sq": "the largest second moment so far (start at 0)"},
          writes=("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), host_scalars=adam_scalars,
          hyper=ADAM_HYPER, needs_step=True, typical_lr=1e-2,
          nonnegative=("exp_avg_sq", "max_exp_avg_sq"), switch_of=("adam", "amsgrad"),
          torch_equivalent=adam_like_torch("AdamW", "Adam", amsgrad=True))
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
    g = grad * grad_scale
    g = g + weight_decay * param if weight_decay != 0.0 else g  # none at 0, as torch
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    max_exp_avg_sq = maximum(max_exp_avg_sq, exp_avg_sq)  # NaN propagates, as in torch
    denom = sqrt(max_exp_avg_sq) * inv_sqrt_bc2 + eps
    return param - step_size * exp_avg / denom, exp_avg, exp_avg_sq, max_exp_avg_sq
