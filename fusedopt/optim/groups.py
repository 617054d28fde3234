"""Parameter groups: the tensors an optimizer updates, their hyperparameters, rule and state.

A group holds either a :class:`~fusedopt.ParamArena` (its launch units are the
arena's flat buffers, one per dtype, and its state is laid out like the arena)
or a list of arrays (one launch unit per tensor).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np

from fusedopt import _checks
from fusedopt.arena import ParamArena
from fusedopt.kernels import Rule


def to_host(a) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array."""
    return a.get() if _checks.array_kind(a) == "cupy" else np.array(a)


def on_device(xp, a):
    """The device context of a CuPy array (a no-op context for NumPy)."""
    return contextlib.nullcontext() if xp is np else xp.cuda.Device(a.device.id)


def zeros_like(xp, a):
    """Zeros shaped and typed like ``a``, on ``a``'s device."""
    with on_device(xp, a):
        return xp.zeros_like(a)


class ParamGroup:
    """One parameter group: tensors (an arena or a list), hyperparameters, schedule, rule, state.

    ``rule`` is the rule this group's hyperparameters select (``amsgrad=True``
    selects AMSGrad on an Adam optimizer); ``state`` holds one array per state
    name of that rule per launch unit, allocated at the first step.
    """

    def __init__(self, params, hyper: dict, schedule: Callable | None, rule: Rule, index: int,
                 owner: str):
        self.hyper = hyper
        self.schedule = schedule
        self.rule = rule
        if isinstance(params, ParamArena):
            self.arena = params
            self.tensors = params.params
            self.kind = params.kind
            self.unit_params = [p for p, _ in params.buffers.values()]  # one unit per dtype
        else:
            if isinstance(params, (np.ndarray, str)) or not isinstance(params, Sequence):
                raise TypeError(f"{owner}: params must be a ParamArena, a list of arrays or a "
                                f"list of group dicts, not {type(params).__name__}")
            self.arena = None
            tensors = []
            for k, p in enumerate(params):
                name = f"params[{k}]" if index == 0 else f"group {index} params[{k}]"
                tensors.append(checked_param(owner, name, p))
            if not tensors:
                raise ValueError(f"{owner}: group {index} has no parameters")
            kinds = {_checks.array_kind(t) for t in tensors}
            if len(kinds) > 1:
                raise TypeError(f"{owner}: NumPy and CuPy arrays mixed in group {index}")
            self.kind = kinds.pop()
            self.tensors = tensors
            self.unit_params = tensors
        self.state: list[list] | None = None  # per unit, one array per state name

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.rule.state

    def allocate(self, xp) -> None:
        """Zeroed state, each array on its parameter's device."""
        self.state = [[zeros_like(xp, p) for _ in self.state_names] for p in self.unit_params]

    def state_views(self, k: int) -> list:
        """Per-tensor views of state ``k`` (arena state is laid out like the arena)."""
        if self.arena is None:
            return [unit[k] for unit in self.state]
        flat = {p.dtype: unit[k] for p, unit in zip(self.unit_params, self.state, strict=True)}
        return self.arena.views(flat)

    def arena_grads(self) -> list[tuple]:
        """(param buffer, grad buffer) per dtype of the arena."""
        return list(zip(self.unit_params, [g for _, g in self.arena.buffers.values()],
                        strict=True))


def checked_param(owner: str, name: str, p):
    """A parameter as a NumPy or CuPy array (DLPack tensors viewed), or a named error."""
    kind = _checks.array_kind(p)
    if kind == "dlpack":
        p = _checks.from_dlpack(owner, name, p)
        kind = _checks.array_kind(p)
    if kind == "other":
        raise TypeError(f"{owner}: {name} is a {type(p).__name__}; parameters are NumPy or CuPy "
                        "arrays (or DLPack tensors), updated in place")
    if p.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{owner}: {name} has dtype {p.dtype}; parameters are float32 or float64")
    if not p.flags.c_contiguous:
        raise ValueError(f"{owner}: {name} is not C-contiguous; pass the array itself")
    if kind == "numpy" and not p.flags.writeable:
        raise ValueError(f"{owner}: {name} is read-only; parameters are updated in place")
    return _checks.as_base_array(p) if kind == "numpy" else p


def checked_grad(owner: str, k: int, g, p, kind: str):
    """``grads[k]`` for parameter ``p``: same kind, shape, dtype and device, not aliasing it."""
    name = f"grads[{k}]"
    gk = _checks.array_kind(g)
    if gk == "dlpack":
        g = _checks.from_dlpack(owner, name, g)
        gk = _checks.array_kind(g)
    if gk != kind:
        raise TypeError(f"{owner}.step: {name} is a {gk} array but the parameter is a {kind} "
                        "array")
    if g.shape != p.shape or g.dtype != p.dtype:
        raise ValueError(f"{owner}.step: {name} is {g.dtype} {tuple(g.shape)} but its "
                         f"parameter is {p.dtype} {tuple(p.shape)}")
    if not g.flags.c_contiguous:
        raise ValueError(f"{owner}.step: {name} is not C-contiguous")
    if kind == "cupy" and g.device.id != p.device.id:
        raise ValueError(f"{owner}.step: {name} is on GPU {g.device.id} but its parameter is "
                         f"on GPU {p.device.id}")
    if _checks.ranges_overlap(g, p):
        raise ValueError(f"{owner}.step: {name} shares memory with its parameter")
    return _checks.as_base_array(g) if kind == "numpy" else g
