"""The exponentially weighted average: the building block of the others."""

from __future__ import annotations

from fusedopt.kernels.registry import REQUIRED, beta, register


# -------------------------------------------------- exponentially weighted average
def ewa_scalars(*, beta: float) -> tuple[float, ...]:
    """Host scalars of :func:`ewa`."""
    return (beta, 1.0 - beta)


@register(arrays={"average": "the running average V, updated in place (start at 0)",
                  "value": "this step's value theta_t; only read"},
          writes=("average",), host_scalars=ewa_scalars,
          hyper=(beta("beta", REQUIRED, "decay: it averages about the last 1/(1-beta) "
                      "values"),))
def ewa(average, value, beta, one_minus_beta):
    r"""Exponentially weighted (moving) average, the building block of the others.

    .. math::  V_t = \beta V_{t-1} + (1-\beta)\,\theta_t

    It averages over roughly the last :math:`1/(1-\beta)` values; start from
    zeros and use :func:`fusedopt.debias` for the early steps.
    """
    return (beta * average + one_minus_beta * value,)
