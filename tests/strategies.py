"""Hypothesis strategies for the rules' inputs: shapes, value scales, hyperparameters.

The per-rule parts come from the table (rule_table.py); ``step`` and
``grad_scale`` are drawn for every rule that takes them.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes
from rule_table import RULE_INFO

from fusedopt.kernels import RULES

shapes = array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12)
grad_scales = st.one_of(st.just(1.0), st.floats(0.0, 1.0))  # a clip factor


@st.composite
def inputs(draw, rule_name: str):
    """Arrays (float64, a reachable state) and hyperparameters for one call of a rule."""
    rule, info = RULES[rule_name], RULE_INFO[rule_name]
    shape = draw(shapes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 10.0 ** draw(st.integers(-3, 3))
    normal = lambda: scale * rng.standard_normal(shape)
    by_name = info.reachable({name: normal() for name in rule.arrays}, normal, scale)
    hyper = info.draw_hyper(draw, st)
    if rule.needs_step:
        hyper["step"] = draw(st.integers(1, 10_000))
    if "grad_scale" in rule.hyper_names:
        hyper["grad_scale"] = draw(grad_scales)
    return tuple(by_name[name] for name in rule.arrays), hyper
