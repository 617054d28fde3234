"""NAdam: Adam with Nesterov momentum (Dozat 2016), as torch.optim.NAdam."""

from __future__ import annotations

import functools
import math
import sys
from numbers import Real

import numpy as np

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
    host_sqrt,
    weight_decay_split,
)

# -------------------------------------------------------------------------- NAdam
# log(1 - x/2) = -sum_k (1/2)^k x^k / k: 60 terms reach float64's precision for any x <= 1
# (padded to 64 with zero terms, which add exactly 0, for a fixed tree of sums).
_TERMS = 64
_K = np.arange(1, 61, dtype=np.float64)
_HALF_POWERS_OVER_K = 0.5**_K / _K
_LOG_096 = math.log(0.96)


def nadam_mu(beta1: float, momentum_decay: float, step):
    r"""The momentum coefficient :math:`\mu_t = \beta_1 (1 - \frac12 0.96^{t\psi})` (Dozat 2016)."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def nadam_mu_product(beta1: float, momentum_decay: float, step):
    r""":math:`\prod_{i=1}^{t} \mu_i` in closed form: constant time for any step.

    With :math:`q = 0.96^\psi`, :math:`\log \prod_i \mu_i = t \log\beta_1 +
    \sum_i \log(1 - q^i/2)`, and expanding the logarithm turns the sum over steps
    into geometric series: :math:`-\sum_k \frac{2^{-k}}{k}\, q^k \frac{1 - q^{tk}}{1 - q^k}`.
    A pure function of the step (a resumed run equals an unbroken one), equal to
    torch's running product to float64 rounding (torch multiplies step by step, in
    float32 unless the default dtype is float64), and never a loop over steps.

    ``step`` may be a device array of step counts (a capturable step's): the same
    elementwise operations and the same fixed order of sums then run on the device,
    with no host read, and give each element the float result.
    """
    if isinstance(step, Real):
        return _mu_product_at(beta1, momentum_decay, int(step))
    return _mu_product(beta1, momentum_decay, step)


@functools.lru_cache(maxsize=4)  # the same step for every tensor of a model: computed once
def _mu_product_at(beta1: float, momentum_decay: float, step: int) -> float:
    return float(_mu_product(beta1, momentum_decay, np.array([step], dtype=np.float64))[0])


def _mu_product(beta1: float, momentum_decay: float, step):
    if beta1 == 0.0:
        return step * 0.0
    log_q = momentum_decay * _LOG_096  # <= 0
    if log_q > -1e-200:  # psi = 0 (or so small that t * psi is too): every mu_t is beta1 / 2
        log_sum = -step * math.log(2.0)
    else:
        kl, weights = (_like(step, a) for a in _series(log_q))
        # -sum_k 2^-k/k q^k (1 - q^(tk)) / (1 - q^k); the two expm1 carry the signs. Terms
        # that underflow to 0 or overflow to -1 are the right limits: no warnings, whatever
        # np.seterr says.
        with np.errstate(all="ignore"):
            terms = weights * _elementwise(step[..., None] * kl, "expm1")
        while terms.shape[-1] > 1:  # a fixed tree: the same sums in any library
            half = terms.shape[-1] // 2
            terms = terms[..., :half] + terms[..., half:]
        log_sum = -terms[..., 0]
    return _elementwise(step * math.log(beta1) + log_sum, "exp")


@functools.lru_cache(maxsize=8)
def _series(log_q: float) -> tuple[np.ndarray, np.ndarray]:
    """The step-independent part of the series, per momentum_decay, padded with zeros."""
    kl, weights = np.zeros(_TERMS), np.zeros(_TERMS)
    with np.errstate(all="ignore"):  # for large psi, kl is -inf and exp(kl) 0: the limits
        kl[: _K.size] = _K * log_q
        weights[: _K.size] = _HALF_POWERS_OVER_K * np.exp(kl[: _K.size]) / np.expm1(
            kl[: _K.size])
    return kl, weights


def _elementwise(x, name: str):
    """``exp`` or ``expm1`` of each element: a torch tensor's own method, or NumPy's ufunc
    (which a CuPy array hands to CuPy)."""
    method = getattr(x, name, None)
    return method() if method is not None else getattr(np, name)(x)


_device_constants: dict = {}


def _like(step, values: np.ndarray):
    """``values`` as an array of ``step``'s kind and device: uploaded once per device (by a
    capturable step's warm-up, not under a CUDA graph capture)."""
    if isinstance(step, np.ndarray):
        return values
    new_tensor = getattr(step, "new_tensor", None)  # torch
    device = str(getattr(step, "device", None))
    key = (type(step).__module__, device, values.tobytes())
    found = _device_constants.get(key)
    if found is None:
        if new_tensor is not None:
            found = new_tensor(values)
        else:  # CuPy (on its current device, the step's)
            found = sys.modules[type(step).__module__.split(".")[0]].asarray(values)
        if len(_device_constants) > 32:
            _device_constants.clear()
        _device_constants[key] = found
    return found


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
            1.0 / host_sqrt(1.0 - beta2**step), eps, coupled_decay, param_scale)


@register(device_scalars=True, specialised=("grad_scale", "param_scale", "weight_decay"),
          arrays={"param": PARAM_DOC, "grad": GRAD_DOC, "exp_avg": EXP_AVG_DOC,
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
    g = grad * grad_scale
    g = g + weight_decay * param if weight_decay != 0.0 else g  # none at 0, as torch
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    denom = sqrt(exp_avg_sq) * inv_sqrt_bc2 + eps
    return param - (grad_coef * g + exp_avg_coef * exp_avg) / denom, exp_avg, exp_avg_sq
