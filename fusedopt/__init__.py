"""fusedopt: fused, in-place optimizer updates written once, run by Numba on the CPU and CUDA.

>>> import numpy as np, fusedopt as fo
>>> param = np.ones(3, np.float32); grad = np.full(3, 0.5, np.float32)
>>> m, v = np.zeros_like(param), np.zeros_like(param)
>>> fo.adam_(param, grad, m, v, step=1, lr=0.1)
>>> param.round(4).tolist()
[0.9, 0.9, 0.9]

Nothing heavy is imported here: not CuPy, not torch, and Numba only when the
first update runs on the CPU.
"""

from fusedopt import backends, schedules
from fusedopt._version import __version__
from fusedopt.arena import ParamArena
from fusedopt.batches import minibatches
from fusedopt.functional import adam_, adamw_, debias, ewa_, momentum_, rmsprop_, sgd_
from fusedopt.mlp import MLP, one_hot
from fusedopt.optim import SGD, Adam, AdamW, Momentum, Optimizer, RMSprop, load, save
from fusedopt.planner import BatchPlan, plan_batch_size
from fusedopt.profile import profile_batch_sizes

__all__ = [
    "MLP",
    "SGD",
    "Adam",
    "AdamW",
    "BatchPlan",
    "Momentum",
    "Optimizer",
    "ParamArena",
    "RMSprop",
    "__version__",
    "adam_",
    "adamw_",
    "backends",
    "debias",
    "ewa_",
    "load",
    "minibatches",
    "momentum_",
    "one_hot",
    "plan_batch_size",
    "profile_batch_sizes",
    "rmsprop_",
    "save",
    "schedules",
    "sgd_",
]
