"""``torch.optim.Optimizer``'s step wrapper, with its profiler range only while profiling.

torch wraps every optimizer's ``step`` (``Optimizer.profile_hook_step``): the step
pre-hooks, global and the optimizer's own (each may return new ``(args, kwargs)``),
the step, ``_optimizer_step_code()`` (a marker for the profiler and dynamo), the post
hooks; all inside ``record_function("Optimizer.step#<Class>.step")``. The range is a
dispatched operator whose tables a model-sized update has pushed out of the caches:
0.18 ms a step on a 2-core CPU, 2% of an Adam step over 10.8M parameters, paid
whether or not anything records it. :func:`hooked` runs the same hooks in the same
order, and opens the same range when a profiler is on (``_profiler_enabled()``: the
autograd profiler, ``torch.profiler.profile`` or anything else that records
functions); ``hooked = True`` tells torch not to wrap it again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch.optim import optimizer as torch_optimizer


def _with_hooks(self, step: Callable, args: tuple, kwargs: dict) -> Any:
    """As torch: the hooks see ``args`` with the optimizer first, and a pre-hook's new
    ``args`` are the step's, the optimizer included."""
    for pre_hook in chain(torch_optimizer._global_optimizer_pre_hooks.values(),
                          self._optimizer_step_pre_hooks.values()):
        result = pre_hook(self, args, kwargs)
        if result is not None:
            if isinstance(result, tuple) and len(result) == 2:
                args, kwargs = result
            else:  # torch's words
                raise RuntimeError(f"{step} must return None or a tuple of (new_args, "
                                   f"new_kwargs), but got {result}.")
    out = step(*args, **kwargs)
    self._optimizer_step_code()
    for post_hook in chain(self._optimizer_step_post_hooks.values(),
                           torch_optimizer._global_optimizer_post_hooks.values()):
        post_hook(self, args, kwargs)
    return out


def hooked(step: Callable) -> Callable:
    """``step`` (a method) wrapped as torch wraps it, less the idle profiler range."""

    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        self = args[0]
        if torch._C._autograd._profiler_enabled():
            name = f"Optimizer.step#{type(self).__name__}.step"
            with torch.autograd.profiler.record_function(name):
                return _with_hooks(self, step, args, kwargs)
        return _with_hooks(self, step, args, kwargs)

    wrapper.hooked = True  # Optimizer._patch_step_function: already wrapped
    return wrapper
