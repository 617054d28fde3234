"""Drop-in replacements for torch.optim's Adam, AdamW, SGD, RMSprop and NAdam, and a Lion.

Each takes the keywords of the class it replaces, with the same defaults, and refuses
bad values with the same errors: the arguments are first given to torch's own class
(on a throwaway parameter), so they are checked by the code that defines them. Its
param groups carry torch's keys, its state torch's names (``step``, ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``, ``momentum_buffer``, ``square_avg``, ``grad_avg``,
``mu_product``), so checkpoints move both ways. The update is fusedopt's rule for the
same formula (see :mod:`fusedopt.kernels.rules`), with the precision options of
:mod:`fusedopt.optim` on top: ``state_dtype``, ``master_weights``,
``stochastic_rounding``, ``seed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from fusedopt.kernels.registry import RULES
from fusedopt.kernels.rules.nadam import nadam_mu
from fusedopt.torch import capturable
from fusedopt.torch.base import FusedOptimizer, as_float
from fusedopt.torch.options import implementation_flags, precision_defaults

#: what torch.optim takes: tensors, (name, tensor) pairs, or param-group dicts
Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, torch.Tensor]]
Real = float | torch.Tensor


def _throwaway() -> list[torch.Tensor]:
    return [torch.zeros(1, requires_grad=True)]


def _defaults(name: str, reference: torch.optim.Optimizer, flags: dict, precision: dict) -> dict:
    implementation_flags(name, **flags)
    return {**reference.defaults, "foreach": flags.get("foreach"), "fused": flags.get("fused"),
            "capturable": flags.get("capturable", False), **precision_defaults(name, **precision)}


def _betas(name: str, group: dict) -> tuple[float, float]:
    beta1, beta2 = group["betas"]
    return as_float(name, "betas[0]", beta1), as_float(name, "betas[1]", beta2)


class Adam(FusedOptimizer):
    r"""torch.optim.Adam, fused: one compiled pass per bucket of tensors.

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g,\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
        \quad \theta \leftarrow \theta - \frac{\alpha}{1-\beta_1^t}\,
        \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    with ``g = grad + weight_decay * theta`` (L2), or ``theta *= 1 - lr * weight_decay``
    first (``decoupled_weight_decay=True``, AdamW); ``amsgrad=True`` divides by the running
    maximum of ``v``.
    """

    STATE_KEYS: ClassVar[dict[str, str]] = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq",
                  "max_exp_avg_sq": "max_exp_avg_sq"}
    _decoupled = False

    def __init__(self, params: Params, lr: Real = 1e-3, betas: tuple[Real, Real] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: Real = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False, state_dtype: str | None = None,
                 master_weights: bool = False, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        name = type(self).__name__
        kwargs = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                      maximize=maximize)
        if self._decoupled:
            reference = torch.optim.AdamW(_throwaway(), **kwargs)
        else:
            reference = torch.optim.Adam(_throwaway(), **kwargs,
                                         decoupled_weight_decay=decoupled_weight_decay)
        defaults = _defaults(name, reference,
                             dict(foreach=foreach, fused=fused, capturable=capturable,
                                  differentiable=differentiable),
                             dict(state_dtype=state_dtype, master_weights=master_weights,
                                  stochastic_rounding=stochastic_rounding, seed=seed))
        super().__init__(params, defaults)

    def _rule_hyper(self, group, state):
        name = type(self).__name__
        beta1, beta2 = _betas(name, group)
        rule = RULES["amsgrad"] if group["amsgrad"] else RULES["adam"]
        return rule, dict(beta1=beta1, beta2=beta2, eps=group["eps"],
                          weight_decay=as_float(name, "weight_decay", group["weight_decay"]),
                          decoupled_weight_decay=group.get("decoupled_weight_decay",
                                                           self._decoupled))


class AdamW(Adam):
    """torch.optim.AdamW, fused: :class:`Adam` with decoupled weight decay (default 1e-2)."""

    _decoupled = True

    def __init__(self, params: Params, lr: Real = 1e-3, betas: tuple[Real, Real] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: Real = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 state_dtype: str | None = None, master_weights: bool = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused, state_dtype=state_dtype,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, seed=seed)


class SGD(FusedOptimizer):
    r"""torch.optim.SGD, fused.

    .. math::
        g = \nabla + \lambda\theta,\quad b \leftarrow \mu b + (1-d) g
        \ (b = g \text{ at the first step}),\quad
        \theta \leftarrow \theta - \alpha\,(g + \mu b \text{ if nesterov else } b)

    and plain ``theta -= lr * g`` when ``momentum == 0``.
    """

    STATE_KEYS: ClassVar[dict[str, str]] = {"velocity": "momentum_buffer"}

    def __init__(self, params: Params, lr: Real = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: Real = 0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None,
                 state_dtype: str | None = None, master_weights: bool = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        reference = torch.optim.SGD(_throwaway(), lr=lr, momentum=momentum, dampening=dampening,
                                    weight_decay=weight_decay, nesterov=nesterov,
                                    maximize=maximize)
        defaults = _defaults(type(self).__name__, reference,
                             dict(foreach=foreach, fused=fused, differentiable=differentiable),
                             dict(state_dtype=state_dtype, master_weights=master_weights,
                                  stochastic_rounding=stochastic_rounding, seed=seed))
        super().__init__(params, defaults)

    def _rule_hyper(self, group, state):
        name = type(self).__name__
        weight_decay = as_float(name, "weight_decay", group["weight_decay"])
        if group["momentum"] == 0:
            return RULES["sgd"], dict(weight_decay=weight_decay)
        # torch starts the buffer at the first gradient, undamped: b = 0 * mu + 1 * g
        first = float(state["step"]) == 0
        return RULES["momentum"], dict(beta=group["momentum"],
                                       dampening=0.0 if first else group["dampening"],
                                       nesterov=group["nesterov"], weight_decay=weight_decay)


class RMSprop(FusedOptimizer):
    r"""torch.optim.RMSprop, fused.

    .. math::
        s \leftarrow \alpha s + (1-\alpha) g^2,\quad
        \theta \leftarrow \theta - \eta\, g / (\sqrt{s} + \epsilon)

    ``momentum > 0`` or ``centered=True`` run the rule ``rmsprop_momentum`` (a momentum
    buffer of the normalised step; the variance ``s - a^2`` with ``a`` the average
    gradient). Without ``centered`` that rule still carries ``grad_avg`` (zeros).
    """

    STATE_KEYS: ClassVar[dict[str, str]] = {"sq_avg": "square_avg", "grad_avg": "grad_avg",
                  "momentum_buffer": "momentum_buffer"}

    def __init__(self, params: Params, lr: Real = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: Real = 0, momentum: float = 0, centered: bool = False,
                 capturable: bool = False, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, *, fused: bool | None = None,
                 state_dtype: str | None = None, master_weights: bool = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        reference = torch.optim.RMSprop(_throwaway(), lr=lr, alpha=alpha, eps=eps,
                                        weight_decay=weight_decay, momentum=momentum,
                                        centered=centered, maximize=maximize)
        defaults = _defaults(type(self).__name__, reference,
                             dict(foreach=foreach, fused=fused, capturable=capturable,
                                  differentiable=differentiable),
                             dict(state_dtype=state_dtype, master_weights=master_weights,
                                  stochastic_rounding=stochastic_rounding, seed=seed))
        super().__init__(params, defaults)

    def _rule_hyper(self, group, state):
        name = type(self).__name__
        hyper = dict(beta=group["alpha"], eps=group["eps"],
                     weight_decay=as_float(name, "weight_decay", group["weight_decay"]))
        if group["momentum"] == 0 and not group["centered"]:
            return RULES["rmsprop"], hyper
        return RULES["rmsprop_momentum"], dict(hyper, momentum=group["momentum"],
                                               centered=group["centered"])


class NAdam(FusedOptimizer):
    r"""torch.optim.NAdam, fused (Dozat 2016, torch's momentum schedule).

    .. math::
        \mu_t = \beta_1 (1 - \tfrac12 0.96^{t\psi}),\quad
        \theta \leftarrow \theta - \alpha\Big(\frac{1-\mu_t}{1-\prod_{i\le t}\mu_i} g
        + \frac{\mu_{t+1}}{1-\prod_{i\le t+1}\mu_i} m\Big) / (\sqrt{\hat v} + \epsilon)

    ``mu_product`` is kept in the state as torch keeps it; the kernel computes the
    product in closed form from the step.
    """

    STATE_KEYS: ClassVar[dict[str, str]] = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}

    def __init__(self, params: Params, lr: Real = 2e-3, betas: tuple[Real, Real] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: Real = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, state_dtype: str | None = None,
                 master_weights: bool = False, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        reference = torch.optim.NAdam(_throwaway(), lr=lr, betas=betas, eps=eps,
                                      weight_decay=weight_decay, momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize)
        defaults = _defaults(type(self).__name__, reference,
                             dict(foreach=foreach, fused=fused, capturable=capturable,
                                  differentiable=differentiable),
                             dict(state_dtype=state_dtype, master_weights=master_weights,
                                  stochastic_rounding=stochastic_rounding, seed=seed))
        super().__init__(params, defaults)

    def _rule_hyper(self, group, state):
        name = type(self).__name__
        beta1, beta2 = _betas(name, group)
        return RULES["nadam"], dict(
            beta1=beta1, beta2=beta2, eps=group["eps"],
            weight_decay=as_float(name, "weight_decay", group["weight_decay"]),
            momentum_decay=group["momentum_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"])

    def _init_state(self, group, p):
        super()._init_state(group, p)
        self.state[p]["mu_product"] = torch.ones(
            (), dtype=torch.get_default_dtype(),
            device=p.device if group["capturable"] else None)

    def _after_step(self, group, params, states, step):
        beta1, _ = _betas(type(self).__name__, group)
        mu = nadam_mu(beta1, group["momentum_decay"], step)
        torch._foreach_mul_([s["mu_product"] for s in states], mu)

    def _after_capturable_step(self, group, states, found_inf):
        r"""``mu_product`` times :math:`\mu_t` (1 where GradScaler skips the step), from the
        device step counts, as torch's capturable NAdam keeps it; the update itself takes
        the product in closed form from the step
        (:func:`~fusedopt.kernels.rules.nadam.nadam_mu_product`)."""
        beta1, _ = _betas(type(self).__name__, group)
        counts, _ = capturable.counts_of([s["step"] for s in states])
        mu = nadam_mu(beta1, group["momentum_decay"], counts.to(torch.float64) + 1.0)
        if found_inf is not None:
            mu = torch.where(found_inf.to(mu.device).reshape(()) > 0, 1.0, mu)
        products = [s["mu_product"] for s in states]
        factors = list(mu.to(products[0].dtype).unbind())
        return lambda: torch._foreach_mul_(products, factors)


class Lion(FusedOptimizer):
    r"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), fused.

    .. math::
        \theta \leftarrow \theta(1 - \alpha\lambda) - \alpha\,
        \mathrm{sign}(\beta_1 m + (1-\beta_1) g),\quad
        m \leftarrow \beta_2 m + (1-\beta_2) g

    torch.optim has no Lion; the keywords follow the paper's reference code.
    """

    STATE_KEYS: ClassVar[dict[str, str]] = {"exp_avg": "exp_avg"}

    def __init__(self, params: Params, lr: Real = 1e-4, betas: tuple[Real, Real] = (0.9, 0.99),
                 weight_decay: Real = 0.0, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None,
                 capturable: bool = False, differentiable: bool = False,
                 state_dtype: str | None = None, master_weights: bool = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        name = type(self).__name__
        implementation_flags(name, foreach=foreach, fused=fused, capturable=capturable,
                             differentiable=differentiable)
        if not 0.0 <= as_float(name, "lr", lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        for k, beta in enumerate(betas):
            if not 0.0 <= as_float(name, f"betas[{k}]", beta) <= 1.0:
                raise ValueError(f"Invalid beta parameter at index {k}: {beta}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, fused=fused, capturable=capturable, differentiable=False,
                        **precision_defaults(name, state_dtype, master_weights,
                                             stochastic_rounding, seed))
        super().__init__(params, defaults)

    def _rule_hyper(self, group, state):
        name = type(self).__name__
        beta1, beta2 = _betas(name, group)
        return RULES["lion"], dict(beta1=beta1, beta2=beta2,
                                   weight_decay=as_float(name, "weight_decay",
                                                         group["weight_decay"]))


__all__ = ["SGD", "Adam", "AdamW", "Lion", "NAdam", "RMSprop"]
