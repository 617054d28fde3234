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
from fusedopt.kernels.dtypes import LOW_PRECISION, as_bits, storage_name

bits = as_bits  # the kernels' view of an array (16-bit storage as its bit patterns)


def state_storage(param_storage: str, state_dtype: str | None) -> str:
    """A state slot's storage: ``state_dtype``, else the parameter's (float32 for 16-bit
    parameters: their moments keep float32's range and precision unless asked otherwise)."""
    if param_storage == "float64":
        return "float64"
    if state_dtype is not None:
        return state_dtype
    return "float32" if param_storage in LOW_PRECISION else param_storage


def zeros(xp, like, storage: str):
    """Zeros of ``like``'s shape in ``storage`` (16-bit: zero patterns), on its device."""
    dtype = np.uint16 if storage in LOW_PRECISION else storage
    with on_device(xp, like):
        return xp.zeros(like.shape, dtype)


def decoded(xp, a, storage: str):
    """float32 values of the 16-bit patterns ``a`` (exact), on its device."""
    with on_device(xp, a):
        if storage == "bfloat16":
            return (a.astype(xp.uint32) << 16).view(xp.float32)
        return a.view(xp.float16).astype(xp.float32)


def to_host(a) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array."""
    return a.get() if _checks.array_kind(a) == "cupy" else np.array(a)


def on_device(xp, a):
    """The device context of a CuPy array (a no-op context for NumPy)."""
    return contextlib.nullcontext() if xp is np else xp.cuda.Device(a.device.id)


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
            self.storage = [storage_name(t.dtype) for t in self.tensors]
            self.unit_storage = [storage_name(p.dtype) for p, _ in params.buffers.values()]
            # one unit per dtype, as the kernels take it
            self.unit_params = [bits(p, s) for (p, _), s in
                                zip(params.buffers.values(), self.unit_storage, strict=True)]
        else:
            if isinstance(params, (np.ndarray, str)) or not isinstance(params, Sequence):
                raise TypeError(f"{owner}: params must be a ParamArena, a list of arrays or a "
                                f"list of group dicts, not {type(params).__name__}")
            self.arena = None
            tensors, self.storage = [], []
            for k, p in enumerate(params):
                name = f"params[{k}]" if index == 0 else f"group {index} params[{k}]"
                tensor, storage = checked_param(owner, name, p)
                tensors.append(tensor)
                self.storage.append(storage)
            if not tensors:
                raise ValueError(f"{owner}: group {index} has no parameters")
            kinds = {_checks.array_kind(t) for t in tensors}
            if len(kinds) > 1:
                raise TypeError(f"{owner}: NumPy and CuPy arrays mixed in group {index}")
            self.kind = kinds.pop()
            self.tensors = tensors
            self.unit_storage = list(self.storage)
            self.unit_params = [bits(t, s) for t, s in zip(tensors, self.storage, strict=True)]
        self.state: list[list] | None = None  # per unit, one array per state name
        self.state_storage: list[str] = []  # per unit
        self.master: list | None = None  # per unit: a float32 copy of a 16-bit parameter

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.rule.state

    def allocate(self, xp, state_dtype: str | None = None, master_weights: bool = False) -> None:
        """Zeroed state in its storage dtype, each array on its parameter's device; with
        ``master_weights``, a float32 copy of each 16-bit parameter."""
        self.state_storage = [state_storage(s, state_dtype) for s in self.unit_storage]
        self.state = [[zeros(xp, p, storage) for _ in self.state_names]
                      for p, storage in zip(self.unit_params, self.state_storage, strict=True)]
        self.master = [decoded(xp, p, s) if master_weights and s in LOW_PRECISION else None
                       for p, s in zip(self.unit_params, self.unit_storage, strict=True)]

    def master_views(self) -> list | None:
        """Per-tensor views of the master copies (None for tensors without one)."""
        if self.master is None:
            return None
        if self.arena is None:
            return list(self.master)
        flat = dict(zip(self.arena.buffers, self.master, strict=True))  # by buffer dtype
        return [None if flat[dt] is None else flat[dt][offset:offset + size].reshape(shape)
                for (dt, offset, size), shape in zip(self.arena.layout, self.arena.shapes,
                                                     strict=True)]

    def state_views(self, k: int) -> list:
        """Per-tensor views of state ``k`` (arena state is laid out like the arena)."""
        if self.arena is None:
            return [unit[k] for unit in self.state]
        return self.arena.views({dt: unit[k] for dt, unit in zip(self.arena.buffers, self.state,
                                                                 strict=True)})

    def arena_grads(self) -> list[tuple]:
        """(param buffer, grad buffer) per dtype of the arena, as the kernels take them."""
        return [(p, bits(g, s)) for p, (_, g), s in
                zip(self.unit_params, self.arena.buffers.values(), self.unit_storage,
                    strict=True)]


def checked_param(owner: str, name: str, p) -> tuple:
    """``(array, storage)``: a parameter as a NumPy or CuPy array (DLPack tensors viewed; a
    torch bfloat16 tensor as its bit patterns) and its storage name, or a named error."""
    kind = _checks.array_kind(p)
    storage = None
    if kind == "dlpack":
        p, storage = _checks.from_dlpack_storage(owner, name, p)
        kind = _checks.array_kind(p)
    if kind == "other":
        raise TypeError(f"{owner}: {name} is a {type(p).__name__}; parameters are NumPy or CuPy "
                        "arrays (or DLPack tensors), updated in place")
    storage = storage or storage_name(p.dtype)
    if storage is None:
        raise TypeError(f"{owner}: {name} has dtype {p.dtype}; parameters are float32, "
                        "bfloat16, float16 or float64")
    if not p.flags.c_contiguous:
        raise ValueError(f"{owner}: {name} is not C-contiguous; pass the array itself")
    if kind == "numpy" and not p.flags.writeable:
        raise ValueError(f"{owner}: {name} is read-only; parameters are updated in place")
    return (_checks.as_base_array(p) if kind == "numpy" else p), storage


def checked_grad(owner: str, k: int, g, p, kind: str, p_storage: str = "float32"):
    """``(grads[k], storage)`` for parameter ``p`` (as the kernels take them): same kind,
    shape and device, the parameter's dtype or float32, not aliasing it."""
    if (type(g) is np.ndarray and kind == "numpy" and g.dtype is p.dtype
            and p_storage in ("float32", "float64") and g.shape == p.shape
            and g.flags.c_contiguous):  # the common case, with no string work
        if _checks.same_owner(g, p) and _checks.ranges_overlap(g, p):
            raise ValueError(f"{owner}.step: grads[{k}] shares memory with its parameter")
        return g, p_storage
    name = f"grads[{k}]"
    gk = _checks.array_kind(g)
    storage = None
    if gk == "dlpack":
        g, storage = _checks.from_dlpack_storage(owner, name, g)
        gk = _checks.array_kind(g)
    if gk != kind:
        raise TypeError(f"{owner}.step: {name} is a {gk} array but the parameter is a {kind} "
                        "array")
    storage = storage or storage_name(g.dtype)  # a uint16 array is not a bfloat16 one
    if g.shape != p.shape or storage not in (p_storage, "float32"):
        raise ValueError(f"{owner}.step: {name} is {storage or g.dtype} {tuple(g.shape)} but "
                         f"its parameter is {p_storage} {tuple(p.shape)}; a gradient has the "
                         "parameter's shape, and its dtype or float32")
    if not g.flags.c_contiguous:
        raise ValueError(f"{owner}.step: {name} is not C-contiguous")
    if kind == "cupy" and g.device.id != p.device.id:
        raise ValueError(f"{owner}.step: {name} is on GPU {g.device.id} but its parameter is "
                         f"on GPU {p.device.id}")
    if _checks.ranges_overlap(g, p):
        raise ValueError(f"{owner}.step: {name} shares memory with its parameter")
    return bits(_checks.as_base_array(g) if kind == "numpy" else g, storage), storage
