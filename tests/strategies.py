"""Hypothesis strategies for the rules' inputs (shapes, value scales, hyperparameters)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

shapes = array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12)
betas = st.floats(0.0, 0.999)
lrs = st.floats(0.0, 1.0)
decays = st.one_of(st.just(0.0), st.floats(0.0, 0.1))
grad_scales = st.one_of(st.just(1.0), st.floats(0.0, 1.0))  # a clip factor
epsilons = st.floats(1e-8, 1.0).map(lambda x: float(np.float32(x)))


@st.composite
def inputs(draw, rule_name: str):
    """Arrays (float64, realistic state) and hyperparameters for one call of a rule."""
    shape = draw(shapes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 10.0 ** draw(st.integers(-3, 3))
    normal = lambda: scale * rng.standard_normal(shape)
    if rule_name == "sgd":
        arrays = (normal(), normal())
        hyper = dict(lr=draw(lrs), weight_decay=draw(decays), grad_scale=draw(grad_scales))
    elif rule_name == "momentum":
        arrays = (normal(), normal(), normal())
        hyper = dict(lr=draw(lrs), beta=draw(betas),
                     dampening=draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
                     nesterov=draw(st.booleans()), weight_decay=draw(decays),
                     grad_scale=draw(grad_scales))
    elif rule_name == "rmsprop":
        arrays = (normal(), normal(), np.abs(normal()) * scale)
        hyper = dict(lr=draw(lrs), beta=draw(betas), eps=draw(epsilons),
                     weight_decay=draw(decays), grad_scale=draw(grad_scales))
    elif rule_name == "adam":
        exp_avg = normal()
        # A reachable state: v is an average of squares, so |m| <= sqrt(v) (Cauchy-Schwarz).
        exp_avg_sq = exp_avg**2 + np.abs(normal()) * scale
        arrays = (normal(), normal(), exp_avg, exp_avg_sq)
        hyper = dict(step=draw(st.integers(1, 10_000)), lr=draw(lrs), beta1=draw(betas),
                     beta2=draw(betas), eps=draw(epsilons), weight_decay=draw(decays),
                     decoupled_weight_decay=draw(st.booleans()),
                     bias_correction=draw(st.booleans()), grad_scale=draw(grad_scales))
    else:
        arrays = (normal(), normal())
        hyper = dict(beta=draw(betas))
    return arrays, hyper
