"""The oracle: each rule as whole-array NumPy expressions, straight from the formulas.

Slow, unfused and obviously right: it is written from API.md's equations, not
from :mod:`fusedopt.kernels.rules`, so testing a backend against it tests the
rule too. It computes in the dtype it is given (pass float64 copies for a
high-precision oracle) and returns new arrays; it never writes to its inputs.
NumPy ufuncs dispatch to CuPy for CuPy arrays, so it also runs on a GPU.
"""

from __future__ import annotations

import numpy as np


def sgd(param, grad, *, lr, weight_decay=0.0, grad_scale=1.0):
    """``g = grad*grad_scale + wd*param; param - lr*g``. Returns ``(param,)``."""
    g = grad * grad_scale
    if weight_decay:  # 0 adds nothing (as torch: an infinite param gives no NaN)
        g = g + weight_decay * param
    return (param - lr * g,)


def momentum(param, grad, velocity, *, lr, beta=0.9, dampening=None, nesterov=False,
             weight_decay=0.0, grad_scale=1.0):
    """``v = beta*v + (1-d)*g; param - lr*(g + beta*v if nesterov else v)``, ``d = beta`` if None.

    ``g = grad*grad_scale + wd*param``. Returns ``(param, velocity)``.
    """
    d = beta if dampening is None else dampening
    g = grad * grad_scale
    if weight_decay:  # 0 adds nothing (as torch: an infinite param gives no NaN)
        g = g + weight_decay * param
    velocity = beta * velocity + (1 - d) * g
    update = g + beta * velocity if nesterov else velocity
    return param - lr * update, velocity


def rmsprop(param, grad, sq_avg, *, lr, beta=0.99, eps=1e-8, weight_decay=0.0, grad_scale=1.0):
    """``s = beta*s + (1-beta)*g*g; param - lr*g/(sqrt(s)+eps)``. Returns ``(param, sq_avg)``."""
    g = grad * grad_scale
    if weight_decay:  # 0 adds nothing (as torch: an infinite param gives no NaN)
        g = g + weight_decay * param
    sq_avg = beta * sq_avg + (1 - beta) * g * g
    return param - lr * g / (np.sqrt(sq_avg) + eps), sq_avg


def rmsprop_momentum(param, grad, sq_avg, grad_avg, momentum_buffer, *, lr, beta=0.99, eps=1e-8,
                     weight_decay=0.0, momentum=0.0, centered=False, grad_scale=1.0):
    """torch.optim.RMSprop with ``momentum`` and ``centered``, as written in its docs.

    Returns ``(param, sq_avg, grad_avg, momentum_buffer)``.
    """
    g = grad * grad_scale
    if weight_decay:  # 0 adds nothing (as torch: an infinite param gives no NaN)
        g = g + weight_decay * param
    sq_avg = beta * sq_avg + (1 - beta) * g * g
    if centered:
        grad_avg = (grad_avg + (1 - beta) * (g - grad_avg) if 1 - beta < 0.5
                    else g - (g - grad_avg) * beta)  # torch's lerp
        variance = sq_avg - grad_avg * grad_avg
    else:
        variance = sq_avg
    momentum_buffer = momentum * momentum_buffer + g / (np.sqrt(variance) + eps)
    return param - lr * momentum_buffer, sq_avg, grad_avg, momentum_buffer


def adam(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
         weight_decay=0.0, decoupled_weight_decay=False, bias_correction=True, grad_scale=1.0):
    """Adam / AdamW exactly as Algorithm 1 of Kingma & Ba (eps outside the sqrt).

    Returns ``(param, exp_avg, exp_avg_sq)``.
    """
    grad = grad * grad_scale
    if decoupled_weight_decay:
        param = param * (1 - lr * weight_decay)
        g = grad
    else:  # 0 adds nothing (as torch: an infinite param gives no NaN)
        g = grad + weight_decay * param if weight_decay else grad
    exp_avg = beta1 * exp_avg + (1 - beta1) * g
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    if bias_correction:
        m_hat = exp_avg / (1 - beta1**step)
        v_hat = exp_avg_sq / (1 - beta2**step)
    else:
        m_hat, v_hat = exp_avg, exp_avg_sq
    return param - lr * m_hat / (np.sqrt(v_hat) + eps), exp_avg, exp_avg_sq


def amsgrad(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, step, lr=1e-3, beta1=0.9,
            beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
            bias_correction=True, grad_scale=1.0):
    """AMSGrad as torch.optim.Adam(amsgrad=True): the running maximum of the raw second
    moment, bias-corrected, in the denominator.

    Returns ``(param, exp_avg, exp_avg_sq, max_exp_avg_sq)``.
    """
    grad = grad * grad_scale
    if decoupled_weight_decay:
        param = param * (1 - lr * weight_decay)
        g = grad
    else:  # 0 adds nothing (as torch: an infinite param gives no NaN)
        g = grad + weight_decay * param if weight_decay else grad
    exp_avg = beta1 * exp_avg + (1 - beta1) * g
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    max_exp_avg_sq = np.maximum(max_exp_avg_sq, exp_avg_sq)
    bc1, bc2 = (1 - beta1**step, 1 - beta2**step) if bias_correction else (1, 1)
    denom = np.sqrt(max_exp_avg_sq / bc2) + eps
    return param - lr * (exp_avg / bc1) / denom, exp_avg, exp_avg_sq, max_exp_avg_sq


def nadam(param, grad, exp_avg, exp_avg_sq, *, step, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False, grad_scale=1.0):
    """NAdam as the algorithm box of torch.optim.NAdam (Dozat 2016).

    ``mu_t = beta1 (1 - 0.5 * 0.96**(t * momentum_decay))``;
    ``m_hat = mu_{t+1} m / (1 - prod_{i<=t+1} mu_i) + (1 - mu_t) g / (1 - prod_{i<=t} mu_i)``;
    ``param -= lr * m_hat / (sqrt(v / (1 - beta2**t)) + eps)``.
    Returns ``(param, exp_avg, exp_avg_sq)``.
    """
    grad = grad * grad_scale
    if decoupled_weight_decay:
        param = param * (1 - lr * weight_decay)
        g = grad
    else:  # 0 adds nothing (as torch: an infinite param gives no NaN)
        g = grad + weight_decay * param if weight_decay else grad
    mus = beta1 * (1 - 0.5 * 0.96 ** (np.arange(1, step + 2, dtype=np.float64) * momentum_decay))
    exp_avg = beta1 * exp_avg + (1 - beta1) * g
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    m_hat = (mus[step] * exp_avg / (1 - np.prod(mus[: step + 1]))
             + (1 - mus[step - 1]) * g / (1 - np.prod(mus[:step])))
    v_hat = exp_avg_sq / (1 - beta2**step)
    return param - lr * m_hat / (np.sqrt(v_hat) + eps), exp_avg, exp_avg_sq


def lion(param, grad, exp_avg, *, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0,
         grad_scale=1.0):
    """Lion, Algorithm 2 of Chen et al. 2023: ``c = interp(g, m, beta1)``,
    ``param -= lr * (sign(c) + weight_decay * param)``, ``m = interp(g, m, beta2)``.

    ``sign(0) = 0``. Returns ``(param, exp_avg)``.
    """
    grad = grad * grad_scale
    update = np.sign(beta1 * exp_avg + (1 - beta1) * grad)
    new_param = param - lr * (update + weight_decay * param)
    return new_param, beta2 * exp_avg + (1 - beta2) * grad


def ewa(average, value, *, beta):
    """``beta*average + (1-beta)*value``. Returns ``(average,)``."""
    return (beta * average + (1 - beta) * value,)


#: name -> reference function, the same names as :data:`fusedopt.kernels.RULES`.
REFERENCE = {f.__name__: f for f in (sgd, momentum, rmsprop, rmsprop_momentum, adam, amsgrad,
                                     nadam, lion, ewa)}
