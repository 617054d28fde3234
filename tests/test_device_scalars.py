"""Rules marked ``device_scalars`` compute their step scalars from array arguments (a
capturable step's device step counts, learning rate and loss scale) exactly as from
floats: each element of the array result equals the float result (the oracle: the same
function on each element's floats)."""

from __future__ import annotations

import numpy as np
import pytest
from rule_table import RULE_INFO

from fusedopt.kernels import RULES

MARKED = [name for name, rule in RULES.items() if rule.device_scalars]


def test_the_optimizer_rules_a_capturable_step_needs_are_marked():
    assert {"adam", "amsgrad", "rmsprop", "rmsprop_momentum", "lion"} <= set(MARKED)


@pytest.mark.parametrize("rule_name", MARKED)
def test_array_arguments_give_each_elements_float_scalars(rule_name):
    rule = RULES[rule_name]
    hyper = {**rule.defaults, **RULE_INFO[rule_name].sample_hyper}
    steps = np.array([1.0, 2.0, 3.0, 10.0, 1000.0])
    lrs = np.array([1e-3, 2e-3, 0.5, 1e-4, 3e-2])
    scales = np.array([1.0, 0.5, 2.0**-12, -1.0, 0.25])
    arguments = dict(hyper, lr=lrs, grad_scale=scales)
    if rule.needs_step:
        arguments["step"] = steps
    together = rule.host_scalars(**arguments)
    for k in range(steps.size):
        one = dict(hyper, lr=float(lrs[k]), grad_scale=float(scales[k]))
        if rule.needs_step:
            one["step"] = int(steps[k])
        alone = rule.host_scalars(**one)
        for name, array_value, float_value in zip(rule.scalars, together, alone, strict=True):
            value = np.broadcast_to(array_value, steps.shape)[k]
            assert value == float_value, (rule_name, name, k, value, float_value)
