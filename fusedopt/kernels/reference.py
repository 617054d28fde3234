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
    g = grad * grad_scale + weight_decay * param
    return (param - lr * g,)


def momentum(param, grad, velocity, *, lr, beta=0.9, dampening=None, nesterov=False,
             weight_decay=0.0, grad_scale=1.0):
    """``v = beta*v + (1-d)*g; param - lr*(g + beta*v if nesterov else v)``, ``d = beta`` if None.

    ``g = grad*grad_scale + wd*param``. Returns ``(param, velocity)``.
    """
    d = beta if dampening is None else dampening
    g = grad * grad_scale + weight_decay * param
    velocity = beta * velocity + (1 - d) * g
    update = g + beta * velocity if nesterov else velocity
    return param - lr * update, velocity


def rmsprop(param, grad, sq_avg, *, lr, beta=0.99, eps=1e-8, weight_decay=0.0, grad_scale=1.0):
    """``s = beta*s + (1-beta)*g*g; param - lr*g/(sqrt(s)+eps)``. Returns ``(param, sq_avg)``."""
    g = grad * grad_scale + weight_decay * param
    sq_avg = beta * sq_avg + (1 - beta) * g * g
    return param - lr * g / (np.sqrt(sq_avg) + eps), sq_avg


def adam(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
         weight_decay=0.0, decoupled_weight_decay=False, bias_correction=True, grad_scale=1.0):
    """Adam / AdamW exactly as Algorithm 1 of Kingma & Ba (eps outside the sqrt).

    Returns ``(param, exp_avg, exp_avg_sq)``.
    """
    grad = grad * grad_scale
    if decoupled_weight_decay:
        param = param * (1 - lr * weight_decay)
        g = grad
    else:
        g = grad + weight_decay * param
    exp_avg = beta1 * exp_avg + (1 - beta1) * g
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    if bias_correction:
        m_hat = exp_avg / (1 - beta1**step)
        v_hat = exp_avg_sq / (1 - beta2**step)
    else:
        m_hat, v_hat = exp_avg, exp_avg_sq
    return param - lr * m_hat / (np.sqrt(v_hat) + eps), exp_avg, exp_avg_sq


def ewa(average, value, *, beta):
    """``beta*average + (1-beta)*value``. Returns ``(average,)``."""
    return (beta * average + (1 - beta) * value,)


#: name -> reference function, the same names as :data:`fusedopt.kernels.rules.RULES`.
REFERENCE = {f.__name__: f for f in (sgd, momentum, rmsprop, adam, ewa)}
