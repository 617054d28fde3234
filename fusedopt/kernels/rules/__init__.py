"""The update rules, written once: plain Python functions on scalars, and their registry entries.

Every backend runs these functions and nothing else: the Numba backend inlines
them into its loops, the CUDA backend translates their source into CUDA C++.
Changing a rule here changes every backend, so the backends cannot drift apart.

Each rule has three parts:

* the **element rule** (``adam``, ``momentum``, ...): the arithmetic for one
  element, in the rule language (:mod:`fusedopt.kernels.language`). Its
  leading arguments are array elements (named after the state they hold), the
  rest are per-step scalars; it returns the new values of the arrays it writes.
* the **host scalars** (``adam_scalars``, ...): the per-step numbers the element
  rule needs, computed once per call on the host in float64 from the public
  hyperparameters (learning rate, bias corrections, ``1 - beta``), so the
  per-element work is as small as it can be.
* the **registration** (:func:`~fusedopt.kernels.registry.register`): arrays,
  hyperparameters with defaults, ranges and docs, step, typical learning rate,
  optimizer class, torch equivalent. Every surface of fusedopt derives from it.

Formulations, stated once (they match torch.optim, Apex, DeepSpeed and optax):

* Adam puts ``eps`` outside the square root, after bias correction
  (Algorithm 1 of Kingma & Ba), and folds the bias corrections into the step
  size: ``param -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)``.
* Momentum defaults to the lecture's exponentially weighted average
  ``v = beta*v + (1-beta)*g``; ``dampening=0`` gives torch's ``v = beta*v + g``.
"""

from __future__ import annotations

import importlib
import pkgutil

# Every module of this package is a rule file: importing it registers its rules. A new
# rule is a new module here (or an addition to one); nothing else imports it by name.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
