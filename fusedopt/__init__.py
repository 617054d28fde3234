"""fusedopt: fused, in-place optimizer updates written once, run by Numba on the CPU and CUDA.

>>> import numpy as np, fusedopt as fo
>>> param = np.ones(3, np.float32); grad = np.full(3, 0.5, np.float32)
>>> m, v = np.zeros_like(param), np.zeros_like(param)
>>> fo.adam_(param, grad, m, v, step=1, lr=0.1)
>>> param.round(4).tolist()
[0.9, 0.9, 0.9]

Every update rule, its functional form (``fo.adam_``) and its optimizer class
(``fo.Adam``) come from one registry entry (:mod:`fusedopt.kernels`).
Nothing heavy is imported here: not CuPy, not torch, and Numba only when the
first update runs on the CPU.
"""

import sys as _sys

from fusedopt import backends, kernels, schedules
from fusedopt._version import __version__
from fusedopt.arena import ParamArena
from fusedopt.functional import (
    adam_,
    adamw_,
    amsgrad_,
    debias,
    ewa_,
    lion_,
    momentum_,
    nadam_,
    rmsprop_,
    sgd_,
)
from fusedopt.optim import (
    SGD,
    Adam,
    AdamW,
    Lion,
    Momentum,
    NAdam,
    Optimizer,
    RMSprop,
    load,
    make_optimizer,
    save,
)
from fusedopt.train import (
    MLP,
    BatchPlan,
    MeasuredPlan,
    measure_batch_size,
    minibatches,
    one_hot,
    plan_batch_size,
    profile_batch_sizes,
)
from fusedopt.train import batches as _batches
from fusedopt.train import datasets as _datasets
from fusedopt.train import mlp as _mlp
from fusedopt.train import planner as _planner
from fusedopt.train import profile as _profile

# The lecture's application moved under fusedopt.train; the old module paths still import.
for _old, _module in (("batches", _batches), ("datasets", _datasets), ("mlp", _mlp),
                      ("planner", _planner), ("profile", _profile)):
    _sys.modules.setdefault(f"fusedopt.{_old}", _module)

__all__ = [
    "MLP",
    "SGD",
    "Adam",
    "AdamW",
    "BatchPlan",
    "Lion",
    "MeasuredPlan",
    "Momentum",
    "NAdam",
    "Optimizer",
    "ParamArena",
    "RMSprop",
    "__version__",
    "adam_",
    "adamw_",
    "amsgrad_",
    "backends",
    "debias",
    "ewa_",
    "kernels",
    "lion_",
    "load",
    "make_optimizer",
    "measure_batch_size",
    "minibatches",
    "momentum_",
    "nadam_",
    "one_hot",
    "plan_batch_size",
    "profile_batch_sizes",
    "rmsprop_",
    "save",
    "schedules",
    "sgd_",
]


def __getattr__(name: str):
    """Update functions and optimizer classes of rules registered after ``import fusedopt``
    (a user's own :func:`fusedopt.kernels.registry.register`), generated on first use."""
    from fusedopt import functional, optim

    if name == "distributed":  # fo.distributed.init(): imports no MPI until init() runs
        import importlib

        return importlib.import_module("fusedopt.distributed")
    try:
        if name.endswith("_") and not name.startswith("_"):
            return functional.function(name)
        return optim.class_named(name)
    except AttributeError:
        raise AttributeError(f"module 'fusedopt' has no attribute {name!r}") from None
