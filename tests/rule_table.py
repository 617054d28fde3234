"""The tests' one table of per-rule inputs, as torch's ``OptimizerInfo``.

Every parametrized test reads its rules from here and from the registry, so a
new rule is picked up by every generic test once it has a row in
:data:`RULE_INFO` (its inputs) and, if it has an optimizer, in
:data:`OPTIMIZER_INFO`; ``test_table_covers_the_registry`` fails until it does.

No Hypothesis at import: the GPU machine, which has none, uses the
deterministic parts (``sample_hyper``, ``reachable``, ``magnitude``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fusedopt.kernels import RULES, VARIANTS, optimizer_names, optimizer_rule


def _identity(arrays, normal, scale):
    return arrays


def _second_moments(*names):
    """State ``names`` made reachable: an average of squares is never below the square of the
    average (so ``|m| <= sqrt(v)``), and never negative."""
    def reachable(arrays, normal, scale):
        out = dict(arrays)
        for name in names:
            first = out.get("exp_avg", 0.0)
            out[name] = np.asarray(first) ** 2 + np.abs(normal()) * scale
        return out
    return reachable


def _lr_times(*terms):
    """A step magnitude ``lr * (sum of terms(arrays, hyper))``."""
    def magnitude(a, h):
        return h["lr"] * sum(term(a, h) for term in terms)
    return magnitude


def _normalised(a, h):
    # Adam-like steps are at most about lr per coordinate (|m_hat| <= sqrt(v_hat)).
    return h["lr"] * (1 + np.abs(a["param"]))


def _nadam_magnitude(a, h):
    """lr times the two terms of NAdam's step, each in absolute value, in float64."""
    t, b1, b2, psi = h["step"], h.get("beta1", 0.9), h.get("beta2", 0.999), \
        h.get("momentum_decay", 4e-3)
    mus = b1 * (1 - 0.5 * 0.96 ** (np.arange(1, t + 2) * psi))
    s = h.get("grad_scale", 1.0)
    g = np.abs(a["grad"] * s) + h.get("weight_decay", 0.0) * np.abs(a["param"])
    m = b1 * np.abs(a["exp_avg"]) + (1 - b1) * g
    v = b2 * a["exp_avg_sq"] + (1 - b2) * g * g
    denom = np.sqrt(v / (1 - b2**t)) + h.get("eps", 1e-8)
    terms = ((1 - mus[t - 1]) / (1 - np.prod(mus[:t])) * g
             + mus[t] / (1 - np.prod(mus[: t + 1])) * m)
    return h["lr"] * (1 + np.abs(a["param"]) + terms / denom)


def _lion_magnitude(a, h):
    """lr (the sign step) plus decay. Where the direction is so close to 0 that float32
    rounding (or a scalar below float32's range, such as beta1=1e-269) may give it another
    sign than the float64 oracle, the result is not determined by the arithmetic: those
    elements are not compared (infinite magnitude); test_lion_sign_of_zero pins sign(0)."""
    b1 = h.get("beta1", 0.9)
    g = a["grad"] * h.get("grad_scale", 1.0)
    c = b1 * a["exp_avg"] + (1 - b1) * g
    size = np.abs(b1 * a["exp_avg"]) + np.abs((1 - b1) * g)
    flip = np.abs(c) <= 1e-5 * size + 1e-30
    return np.where(flip, np.inf, h["lr"] * (1 + h.get("weight_decay", 0.0) * np.abs(a["param"])))


def _rmsprop_momentum_hyper(draw, st):
    """Centered with 0 < beta < 1e-3, the variance s - a^2 is below float32's resolution of
    s (it is about beta * s): its float32 value is noise, even negative (NaN, as in torch)."""
    centered = draw(st.booleans())
    beta = draw(st.one_of(st.just(0.0), st.floats(1e-3, 0.999)) if centered else _betas(st))
    return dict(lr=draw(_lrs(st)), beta=beta, eps=draw(_epsilons(st)),
                weight_decay=draw(_decays(st)), momentum=draw(_betas(st)), centered=centered)


def _rmsprop_momentum_magnitude(a, h):
    """The step's terms, and (centered) how far a float32 rounding of ``s - a^2`` moves
    ``g / (sqrt(s - a^2) + eps)``: the subtraction cancels where the variance is small."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return _rmsprop_momentum_terms(a, h)


def _rmsprop_momentum_terms(a, h):
    b, centered = h.get("beta", 0.99), h.get("centered", False)
    g = a["grad"] * h.get("grad_scale", 1.0) + h.get("weight_decay", 0.0) * a["param"]
    sq = b * a["sq_avg"] + (1 - b) * g * g
    avg = b * a["grad_avg"] + (1 - b) * g if centered else a["grad_avg"]
    variance = np.maximum(sq - avg * avg if centered else sq, 0.0)
    root = np.sqrt(variance)
    denom = root + h.get("eps", 1e-8)
    step = np.abs(h.get("momentum", 0.0) * a["momentum_buffer"]) + np.abs(g) / denom
    if centered:
        step = step + np.abs(g) * (sq + avg * avg) / (2 * np.maximum(root, 1e-300) * denom**2)
    return (1 + h["lr"]) * step


@dataclass(frozen=True)
class RuleInfo:
    """How to test one rule.

    ``sample_hyper``: typical hyperparameters (deterministic tests);
    ``draw_hyper(draw, st)``: Hypothesis draws of every hyperparameter over its range
    (``step`` and ``grad_scale`` are drawn generically);
    ``reachable(arrays, normal, scale)``: the arrays by name -> a state the rule can reach;
    ``magnitude(arrays, hyper)``: the size of the step's terms, which float32 error is
    relative to (see test_rules_vs_reference.py).
    """

    sample_hyper: dict
    draw_hyper: Callable
    reachable: Callable = _identity
    magnitude: Callable = field(default=lambda a, h: 0.0)


def _betas(st):
    return st.floats(0.0, 0.999)


def _lrs(st):
    return st.floats(0.0, 1.0)


def _decays(st):
    return st.one_of(st.just(0.0), st.floats(0.0, 0.1))


def _epsilons(st):
    return st.floats(1e-8, 1.0).map(lambda x: float(np.float32(x)))


def _adam_hyper(draw, st):
    beta2 = draw(_betas(st))
    # beta1 <= sqrt(beta2), Adam's regime: from a reachable state |m| <= C sqrt(v). Beyond
    # it (beta1 = 0.5, beta2 = 0, drawn once) a small g sets v = g^2 under a large m, and
    # float32's rounding of g (against weight decay) is amplified past any tolerance set
    # by the step: 2.1e-5 relative at a step of 3.5e4 with lr = 1, in float32 as in torch.
    beta1 = min(draw(_betas(st)), float(np.sqrt(beta2)))
    return dict(lr=draw(_lrs(st)), beta1=beta1, beta2=beta2,
                eps=draw(_epsilons(st)), weight_decay=draw(_decays(st)),
                decoupled_weight_decay=draw(st.booleans()),
                bias_correction=draw(st.booleans()))


RULE_INFO: dict[str, RuleInfo] = {
    "sgd": RuleInfo(
        dict(lr=0.1, weight_decay=0.01),
        lambda draw, st: dict(lr=draw(_lrs(st)), weight_decay=draw(_decays(st))),
        magnitude=_lr_times(lambda a, h: np.abs(a["grad"]),
                            lambda a, h: h.get("weight_decay", 0.0) * np.abs(a["param"]))),
    "momentum": RuleInfo(
        dict(lr=0.1, beta=0.9, nesterov=True, dampening=0.0),
        lambda draw, st: dict(lr=draw(_lrs(st)), beta=draw(_betas(st)),
                              dampening=draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
                              nesterov=draw(st.booleans()), weight_decay=draw(_decays(st))),
        magnitude=_lr_times(lambda a, h: 2 * np.abs(a["grad"]),
                            lambda a, h: h.get("weight_decay", 0.0) * np.abs(a["param"]),
                            lambda a, h: np.abs(a["velocity"]))),
    "rmsprop": RuleInfo(
        dict(lr=0.01, beta=0.9, eps=1e-6, weight_decay=0.01),
        lambda draw, st: dict(lr=draw(_lrs(st)), beta=draw(_betas(st)),
                              eps=draw(_epsilons(st)), weight_decay=draw(_decays(st))),
        reachable=lambda a, normal, scale: {**a, "sq_avg": np.abs(a["sq_avg"]) * scale},
        magnitude=_normalised),
    "rmsprop_momentum": RuleInfo(
        dict(lr=0.01, beta=0.9, eps=1e-6, weight_decay=0.01, momentum=0.9, centered=True),
        _rmsprop_momentum_hyper,
        reachable=lambda a, normal, scale: {
            **a, "sq_avg": np.asarray(a["grad_avg"]) ** 2 + (np.abs(a["sq_avg"]) + 1) * scale},
        magnitude=_rmsprop_momentum_magnitude),
    "adam": RuleInfo(
        dict(step=3, lr=0.01, weight_decay=0.01, decoupled_weight_decay=True),
        _adam_hyper, reachable=_second_moments("exp_avg_sq"), magnitude=_normalised),
    "amsgrad": RuleInfo(
        dict(step=3, lr=0.01, beta1=0.8, weight_decay=0.01),
        _adam_hyper, reachable=_second_moments("exp_avg_sq", "max_exp_avg_sq"),
        magnitude=_normalised),
    "nadam": RuleInfo(
        dict(step=5, lr=0.01, weight_decay=0.01, momentum_decay=4e-3),
        lambda draw, st: dict(lr=draw(_lrs(st)), beta1=draw(_betas(st)),
                              beta2=draw(_betas(st)), eps=draw(_epsilons(st)),
                              weight_decay=draw(_decays(st)),
                              momentum_decay=draw(st.one_of(st.just(4e-3), st.floats(0.0, 1.0))),
                              decoupled_weight_decay=draw(st.booleans())),
        reachable=_second_moments("exp_avg_sq"), magnitude=_nadam_magnitude),
    "lion": RuleInfo(
        dict(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1),
        lambda draw, st: dict(lr=draw(_lrs(st)), beta1=draw(_betas(st)),
                              beta2=draw(_betas(st)), weight_decay=draw(_decays(st))),
        magnitude=_lion_magnitude),
    "ewa": RuleInfo(dict(beta=0.9), lambda draw, st: dict(beta=draw(_betas(st)))),
}

#: optimizer name -> constructor keywords for the stateful tests (every name of
#: fusedopt.kernels.optimizer_names()).
OPTIMIZER_INFO: dict[str, dict] = {
    "sgd": dict(lr=0.05, weight_decay=0.01),
    "momentum": dict(lr=0.05, beta=0.8, nesterov=True, dampening=0.0),
    "rmsprop": dict(lr=0.01, beta=0.9, eps=1e-6, weight_decay=0.01),
    "adam": dict(lr=0.01, beta1=0.8, beta2=0.95, weight_decay=0.01),
    "adamw": dict(lr=0.01, weight_decay=0.1),
    "amsgrad": dict(lr=0.01, beta1=0.8, beta2=0.95, weight_decay=0.01),
    "nadam": dict(lr=0.01, beta1=0.85, beta2=0.99, weight_decay=0.01),
    "lion": dict(lr=0.003, beta1=0.9, beta2=0.99, weight_decay=0.1),
}

#: Further (optimizer name, keywords) checked against torch over 50 steps, beyond the
#: defaults: the switches and flags that select other formulas.
TORCH_EXTRA_CASES: list[tuple[str, dict]] = [
    ("adamw", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("nadam", dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True)),
    ("momentum", dict(lr=0.05, beta=0.9, dampening=0.0, nesterov=False, weight_decay=0.01)),
]


def optimizer_class(name: str):
    """The optimizer class an optimizer name builds, and the switches it sets."""
    import fusedopt as fo

    variant, switches = optimizer_names()[name]
    return fo.optim.OPTIMIZERS[variant.name], dict(switches)


def functional_equivalent(name: str, kwargs: dict):
    """(``fo.<rule>_``, its keywords, the rule) doing what optimizer ``name`` with ``kwargs``
    does, by hand."""
    import fusedopt as fo

    variant, switches = optimizer_names()[name]
    kwargs = {**switches, **kwargs}
    rule = variant.rule
    for switch, switched in variant.switches.items():
        if kwargs.pop(switch, False):
            rule = switched
    if rule is variant.rule and variant.name != rule.name:
        function = fo.functional.FUNCTIONS[variant.name + "_"]  # e.g. adamw_
    else:
        function = fo.functional.FUNCTIONS[rule.name + "_"]
        kwargs.update(variant.fixed)
    return function, kwargs, rule


def sample_arrays(rule_name: str, shape, seed: int = 0, scale: float = 1.0) -> dict:
    """Deterministic float64 arrays by name, in a state the rule can reach."""
    rng = np.random.default_rng(seed)
    normal = lambda: scale * rng.standard_normal(shape)
    arrays = {name: normal() for name in RULES[rule_name].arrays}
    return RULE_INFO[rule_name].reachable(arrays, normal, scale)


def covered() -> tuple[set, set, set, set]:
    """(rules, table rows, optimizer names, optimizer rows): equal when the table is complete."""
    return set(RULES), set(RULE_INFO), set(optimizer_names()), set(OPTIMIZER_INFO)


__all__ = ["OPTIMIZER_INFO", "RULE_INFO", "TORCH_EXTRA_CASES", "VARIANTS", "RuleInfo",
           "covered", "functional_equivalent", "optimizer_class", "optimizer_rule",
           "sample_arrays"]
