"""The constructor options of fusedopt.torch's optimizers beyond the rule's
hyperparameters: the precision recipe, and torch's flags that choose an implementation."""

from __future__ import annotations

from fusedopt import _checks
from fusedopt.torch.dtypes import STATE_DTYPES

#: the keys fusedopt adds to torch's param groups
PRECISION_KEYS = ("state_dtype", "master_weights", "stochastic_rounding", "seed")


def precision_defaults(name: str, state_dtype, master_weights, stochastic_rounding,
                       seed) -> dict:
    """The precision options, checked, as param-group entries."""
    if state_dtype is not None and state_dtype not in STATE_DTYPES:
        raise ValueError(f"{name}: state_dtype={state_dtype!r}; use None (the parameter's "
                         f"dtype), 'float32' or 'bfloat16'")
    return {"state_dtype": state_dtype,
            "master_weights": _checks.flag(name, "master_weights", master_weights),
            "stochastic_rounding": _checks.flag(name, "stochastic_rounding",
                                                stochastic_rounding),
            "seed": _checks.seed(name, seed)}


def implementation_flags(name: str, *, foreach=None, fused=None, capturable=False,
                         differentiable=False) -> None:
    """torch's flags that choose its implementation: fusedopt is always one fused pass;
    ``capturable`` chooses the step that reads nothing on the host."""
    for flag_name, value in (("foreach", foreach), ("fused", fused)):
        if value not in (None, True, False):
            raise TypeError(f"{name}: {flag_name} must be None, True or False, not {value!r}")
    _checks.flag(name, "capturable", capturable)
    if differentiable:
        raise ValueError(f"{name}: differentiable=True is not supported: fusedopt updates the "
                         "parameters in place, outside autograd; use torch.optim for a "
                         "differentiable step")
