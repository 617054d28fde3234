"""Stateful optimizers: state, step count, schedules, clipping, non-finite steps, checkpoints.

An optimizer owns the state of its rule (``velocity``, ``sq_avg``,
``exp_avg``/``exp_avg_sq``), allocated on the parameters' device and dtype at
the first step, and calls the same fused kernels as the functional API.

Two ways to hand it parameters:

* a :class:`~fusedopt.ParamArena` (the fast path): its state lives in flat
  buffers laid out like the arena, and a step is **one kernel launch per dtype**
  whatever the number of tensors; ``opt.step()`` reads the arena's gradients;
* a list of arrays: one fused launch per tensor; ``opt.step(grads)``.

Parameter groups are dicts, as in torch: ``[{"params": arena_or_list, "lr": ...,
"schedule": ...}, ...]``; each key overrides the optimizer's default for that
group. A schedule (any ``schedule(t) -> lr``, e.g. from :mod:`fusedopt.schedules`)
is evaluated ``by="epoch"`` (default; ``t = opt.epoch``, which starts at 1 and
advances when you call :meth:`Optimizer.next_epoch` after each pass over the
training set) or ``by="step"`` (``t`` = the 1-based number of the update being
made).

``max_grad_norm`` clips by global norm and ``nonfinite="skip"``/``"raise"``
catches NaN/inf gradients; both use one extra read of the gradients (a
float64 sum of squares), and the clip factor enters the fused step as a
scalar (``grad_scale``), so no pass writes the gradients. A skipped step
leaves the parameters, the state and the step count as they were.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from fusedopt import _checks, backends, functional
from fusedopt.arena import ParamArena
from fusedopt.kernels.rules import RULES

_FORMAT, _VERSION = "fusedopt.optimizer", 1
_GROUP_KEYS = {"params", "schedule"}


def to_host(a) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array."""
    return a.get() if _checks.array_kind(a) == "cupy" else np.array(a)


class _Group:
    """One parameter group: its tensors (an arena or a list), hyperparameters, schedule, state."""

    def __init__(self, params, hyper: dict, schedule, index: int, owner: str):
        self.hyper = hyper
        self.schedule = schedule
        if isinstance(params, ParamArena):
            self.arena = params
            self.tensors = params.params
            self.kind = params.kind
            # One launch unit per dtype: the flat buffers.
            self.unit_params = [p for p, _ in params.buffers.values()]
        else:
            if isinstance(params, (np.ndarray, str)) or not isinstance(params, Sequence):
                raise TypeError(f"{owner}: params must be a ParamArena, a list of arrays or a "
                                f"list of group dicts, not {type(params).__name__}")
            self.arena = None
            tensors = []
            for k, p in enumerate(params):
                name = f"params[{k}]" if index == 0 else f"group {index} params[{k}]"
                tensors.append(_checked_param(owner, name, p))
            if not tensors:
                raise ValueError(f"{owner}: group {index} has no parameters")
            kinds = {_checks.array_kind(t) for t in tensors}
            if len(kinds) > 1:
                raise TypeError(f"{owner}: NumPy and CuPy arrays mixed in group {index}")
            self.kind = kinds.pop()
            self.tensors = tensors
            self.unit_params = tensors
        self.state: list[list] | None = None  # per unit, one array per state name

    def allocate(self, state_names: tuple[str, ...], xp) -> None:
        """Zeroed state, each array on its parameter's device."""
        self.state = [[_zeros_like(xp, p) for _ in state_names] for p in self.unit_params]

    def state_views(self, k: int) -> list:
        """Per-tensor views of state ``k`` (arena state is laid out like the arena)."""
        if self.arena is None:
            return [unit[k] for unit in self.state]
        flat = {p.dtype: unit[k] for p, unit in zip(self.unit_params, self.state, strict=True)}
        return self.arena.views(flat)


def _on_device(xp, a):
    """The device context of a CuPy array (a no-op context for NumPy)."""
    import contextlib

    return contextlib.nullcontext() if xp is np else xp.cuda.Device(a.device.id)


def _zeros_like(xp, a):
    with _on_device(xp, a):
        return xp.zeros_like(a)


def _checked_param(owner: str, name: str, p):
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


class Optimizer:
    """Base class: see the module docstring. Subclasses set ``rule_name`` and ``_defaults``."""

    rule_name: ClassVar[str] = ""
    _defaults: ClassVar[dict] = {}
    _check: Callable[..., dict]

    def __init__(self, params, *, schedule: Callable[[int], float] | None = None,
                 by: str = "epoch", max_grad_norm: float | None = None,
                 nonfinite: str | None = None, backend: str | None = None, **hyper):
        name = type(self).__name__
        self.rule = RULES[self.rule_name]
        self.state_names = self.rule.arrays[2:]
        unknown = set(hyper) - set(self._defaults)
        if unknown:
            raise TypeError(f"{name}: unknown argument(s) {sorted(unknown)}; "
                            f"{name} takes {sorted(self._defaults)}")
        if by not in ("epoch", "step"):
            raise ValueError(f"{name}: by={by!r}; a schedule runs by 'epoch' or by 'step'")
        if nonfinite not in (None, "skip", "raise"):
            raise ValueError(f"{name}: nonfinite={nonfinite!r}; choose None (no check), 'skip' "
                             "or 'raise'")
        if max_grad_norm is not None:
            max_grad_norm = _checks.real(name, "max_grad_norm", max_grad_norm, 0.0,
                                         lo_open=True)
        if schedule is not None and not callable(schedule):
            raise TypeError(f"{name}: schedule must be callable, e.g. "
                            "fo.schedules.exponential(0.01)")
        self.by, self.max_grad_norm, self.nonfinite = by, max_grad_norm, nonfinite
        defaults = self._validate({**self._defaults, **hyper}, name)
        self.groups: list[_Group] = []
        specs = (list(params) if isinstance(params, Sequence) and params
                 and isinstance(params[0], dict) else [{"params": params}])
        for index, spec in enumerate(specs):
            if not isinstance(spec, dict) or "params" not in spec:
                raise TypeError(f"{name}: group {index} must be a dict with a 'params' entry")
            extra = set(spec) - _GROUP_KEYS - set(self._defaults)
            if extra:
                raise ValueError(f"{name}: group {index} has unknown key(s) {sorted(extra)}")
            group_hyper = self._validate(
                {**defaults, **{k: v for k, v in spec.items() if k in defaults}},
                f"{name} group {index}")
            group_schedule = spec.get("schedule", schedule)
            if group_schedule is not None and not callable(group_schedule):
                raise TypeError(f"{name}: group {index} schedule must be callable")
            self.groups.append(_Group(spec["params"], group_hyper, group_schedule, index, name))
        kinds = {g.kind for g in self.groups}
        if len(kinds) > 1:
            raise TypeError(f"{name}: NumPy and CuPy parameters mixed; one optimizer, one device")
        kind = kinds.pop()
        # A tensor given twice (or two overlapping views) would be updated twice per step.
        _checks.no_overlap_among(name, "parameters", [p for g in self.groups
                                                      for p in g.unit_params])
        self.backend = _checks.backend_for(name, kind, backend)
        self._impl = backends.get(self.backend)
        self._xp = np if kind == "numpy" else __import__("cupy")
        self.step_count = 0
        self.epoch = 1
        self.skipped_steps = 0
        self.last_grad_norm: float | None = None

    # ---------------------------------------------------------------- hyperparameters
    def _validate(self, hyper: dict, where: str) -> dict:
        """``hyper`` checked (named errors), without the per-step ``step`` and ``grad_scale``."""
        extra = {"step": 1} if self.rule_name == "adam" else {}
        checked = self._check(where, **hyper, **extra)
        checked.pop("step", None)
        checked.pop("grad_scale", None)
        return checked

    def _lr(self, group: _Group, step: int) -> float:
        if group.schedule is None:
            return group.hyper["lr"]
        t = self.epoch if self.by == "epoch" else step
        return _checks.real(type(self).__name__, f"schedule({t})", group.schedule(t), 0.0)

    @property
    def lr(self) -> float:
        """The learning rate the next step uses (of the first group)."""
        return self._lr(self.groups[0], self.step_count + 1)

    @lr.setter
    def lr(self, value: float) -> None:
        value = _checks.real(type(self).__name__, "lr", value, 0.0)
        if any(group.schedule is not None for group in self.groups):
            raise ValueError(f"{type(self).__name__}: lr is set by the schedule; remove the "
                             "schedule to set it by hand")
        for group in self.groups:
            group.hyper["lr"] = value

    def next_epoch(self) -> int:
        """Advance the epoch counter (call after each pass over the training set)."""
        self.epoch += 1
        return self.epoch

    # --------------------------------------------------------------------------- step
    def _units(self, grads) -> list[list[tuple]]:
        """Per group, the (param, grad) pairs to launch over; every check before any write."""
        name = type(self).__name__
        list_groups = [g for g in self.groups if g.arena is None]
        if grads is None:
            if list_groups:
                raise TypeError(f"{name}.step() needs grads: a sequence matching the "
                                "parameters (only a ParamArena supplies its own)")
            return [list(zip(g.unit_params, [gr for _, gr in g.arena.buffers.values()],
                             strict=True)) for g in self.groups]
        if not list_groups:
            raise TypeError(f"{name}.step(grads): this optimizer updates ParamArena(s); write "
                            "the gradients into arena.grads and call step() with no arguments")
        if isinstance(grads, (np.ndarray, str)) or not isinstance(grads, Sequence):
            raise TypeError(f"{name}.step: grads must be a sequence of arrays, one per parameter")
        expected = sum(len(g.tensors) for g in list_groups)
        if len(grads) != expected:
            raise ValueError(f"{name}.step: got {len(grads)} gradients for {expected} "
                             "parameters; pass one per parameter, in order")
        out, k = [], 0
        for group in self.groups:
            if group.arena is not None:
                out.append(list(zip(group.unit_params,
                                    [gr for _, gr in group.arena.buffers.values()],
                                    strict=True)))
                continue
            pairs = []
            for p in group.tensors:
                g = _checks_grad(name, k, grads[k], p, group.kind)
                pairs.append((p, g))
                k += 1
            out.append(pairs)
        return out

    def step(self, grads=None) -> bool:
        """One update of every parameter; returns False when a non-finite step was skipped.

        Args:
            grads: one gradient per parameter, in order (NumPy/CuPy arrays or DLPack
                tensors); ``None`` when the parameters are ParamArenas, whose
                ``arena.grads`` are used.
        """
        units = self._units(grads)
        t = self.step_count + 1
        lrs = [self._lr(group, t) for group in self.groups]  # a bad schedule fails here, first
        scale = 1.0
        if self.max_grad_norm is not None or self.nonfinite is not None:
            # One read of the gradients; on a GPU the partial sums stay on the device and the
            # host reads their total once.
            total = float(sum(self._impl.sum_of_squares(g) for pairs in units for _, g in pairs))
            norm = math.sqrt(total) if total == total else math.nan
            self.last_grad_norm = norm
            if not math.isfinite(norm):
                if self.nonfinite == "raise":
                    raise FloatingPointError(self._nonfinite_message(units))
                if self.nonfinite == "skip":
                    self.skipped_steps += 1
                    warnings.warn(f"{type(self).__name__}: non-finite gradient, step "
                                  f"{self.step_count + 1} skipped ({self.skipped_steps} so far)",
                                  RuntimeWarning, stacklevel=2)
                    return False
            elif self.max_grad_norm is not None and norm + 1e-6 > self.max_grad_norm:
                scale = self.max_grad_norm / (norm + 1e-6)  # as torch's clip_grad_norm_
        if self.groups[0].state is None:
            for group in self.groups:
                group.allocate(self.state_names, self._xp)
        rule, impl = self.rule, self._impl
        launches = []  # everything prepared before the first write
        for group, pairs, lr in zip(self.groups, units, lrs, strict=True):
            hyper = {**group.hyper, "lr": lr, "grad_scale": scale}
            if self.rule_name == "adam":
                hyper["step"] = t
            prepared = {}
            for (p, g), state in zip(pairs, group.state, strict=True):
                if p.dtype not in prepared:
                    prepared[p.dtype] = impl.prepare(rule, hyper, p.dtype)
                launches.append(((p, g, *state), prepared[p.dtype]))
        for arrays, scalars in launches:
            impl.launch(rule, arrays, scalars)
        self.step_count = t
        return True

    def _nonfinite_message(self, units) -> str:
        bad = []
        for gi, (group, pairs) in enumerate(zip(self.groups, units, strict=True)):
            grads = (group.arena.grads if group.arena is not None else [g for _, g in pairs])
            for k, g in enumerate(grads):
                if not math.isfinite(self._impl.sum_of_squares(g)):
                    bad.append(f"group {gi} tensor {k} {tuple(g.shape)}")
        return (f"{type(self).__name__}: non-finite gradient at step {self.step_count + 1} in "
                f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; nothing was updated "
                "(nonfinite='skip' skips such steps instead)")

    # -------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything needed to resume: counters, hyperparameters, parameters and state.

        Arrays are NumPy copies (a GPU checkpoint loads on a CPU and back);
        schedules are code and are not saved: construct the optimizer with the
        same schedule before loading.
        """
        groups = []
        for group in self.groups:
            entry = {"hyper": dict(group.hyper),
                     "shapes": [list(t.shape) for t in group.tensors],
                     "dtypes": [t.dtype.name for t in group.tensors],
                     "params": [to_host(t) for t in group.tensors], "state": {}}
            if group.state is not None:
                for k, state_name in enumerate(self.state_names):
                    entry["state"][state_name] = [to_host(v) for v in group.state_views(k)]
            groups.append(entry)
        return {"format": _FORMAT, "version": _VERSION, "optimizer": type(self).__name__,
                "step": self.step_count, "epoch": self.epoch,
                "skipped_steps": self.skipped_steps, "groups": groups}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; a mismatch is a ValueError and changes nothing."""
        name = type(self).__name__
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"{name}.load_state_dict: not a fusedopt optimizer state")
        if state.get("version") != _VERSION:
            raise ValueError(f"{name}.load_state_dict: state version {state.get('version')!r}; "
                             f"this fusedopt reads version {_VERSION}")
        if state.get("optimizer") != name:
            raise ValueError(f"{name}.load_state_dict: the state is of a "
                             f"{state.get('optimizer')!r} optimizer, not {name!r}")
        counters = {}
        for key, lo in (("step", 0), ("epoch", 1), ("skipped_steps", 0)):
            value = state.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ValueError(f"{name}.load_state_dict: {key}={value!r} is invalid")
            counters[key] = int(value)
        groups = state.get("groups")
        if not isinstance(groups, list) or len(groups) != len(self.groups):
            raise ValueError(f"{name}.load_state_dict: the state has "
                             f"{len(groups) if isinstance(groups, list) else 'no'} group(s), "
                             f"this optimizer {len(self.groups)}")
        staged = []  # (group, hyper, params on device, state on device or None)
        for gi, (group, entry) in enumerate(zip(self.groups, groups, strict=True)):
            where = f"{name}.load_state_dict: group {gi}"
            if not isinstance(entry, dict) or not isinstance(entry.get("hyper", {}), dict) \
                    or not isinstance(entry.get("state") or {}, dict):
                raise ValueError(f"{where} is not a group's state (a dict with 'hyper', "
                                 "'params' and 'state')")
            hyper = dict(entry.get("hyper", {}))
            if set(hyper) != set(group.hyper):
                raise ValueError(f"{where} hyperparameters {sorted(hyper)} are not "
                                 f"{sorted(group.hyper)}")
            try:
                hyper = self._validate(hyper, where)
            except TypeError as exc:  # a wrong type in a file is a bad file: one error type
                raise ValueError(str(exc)) from exc
            params = self._staged_arrays(where, "params", entry.get("params"), group.tensors)
            saved_state = entry.get("state") or {}
            if saved_state and set(saved_state) != set(self.state_names):
                raise ValueError(f"{where}: state {sorted(saved_state)} is not "
                                 f"{sorted(self.state_names)}")
            state_arrays = ({k: self._staged_arrays(where, k, saved_state[k], group.tensors)
                             for k in self.state_names} if saved_state else None)
            staged.append((group, hyper, params, state_arrays))
        if any(s is not None for *_, s in staged) and any(s is None for *_, s in staged):
            raise ValueError(f"{name}.load_state_dict: some groups have state and some not")
        # Everything checked and on the device: now write.
        for group, hyper, params, state_arrays in staged:
            group.hyper = hyper
            for dst, src in zip(group.tensors, params, strict=True):
                dst[...] = src
            if state_arrays is None:
                group.state = None
                continue
            if group.state is None:
                group.allocate(self.state_names, self._xp)
            for k, state_name in enumerate(self.state_names):
                for dst, src in zip(group.state_views(k), state_arrays[state_name], strict=True):
                    dst[...] = src
        self.step_count = counters["step"]
        self.epoch = counters["epoch"]
        self.skipped_steps = counters["skipped_steps"]

    def _staged_arrays(self, where: str, what: str, arrays, like: list) -> list:
        if not isinstance(arrays, list) or len(arrays) != len(like):
            raise ValueError(f"{where}: {what} has {len(arrays) if isinstance(arrays, list) else 0}"
                             f" arrays for {len(like)} parameters")
        out = []
        for k, (a, ref) in enumerate(zip(arrays, like, strict=True)):
            if not isinstance(a, np.ndarray) and _checks.array_kind(a) != "cupy":
                raise ValueError(f"{where}: {what}[{k}] is not an array")
            if tuple(a.shape) != tuple(ref.shape) or a.dtype != ref.dtype:
                raise ValueError(f"{where}: {what}[{k}] is {a.dtype} {tuple(a.shape)} but the "
                                 f"parameter is {ref.dtype} {tuple(ref.shape)}")
            with _on_device(self._xp, ref):  # onto the parameter's own GPU
                out.append(self._xp.asarray(a))
        return out


def _checks_grad(owner: str, k: int, g, p, kind: str):
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


class SGD(Optimizer):
    r"""Stochastic (mini-batch) gradient descent: :math:`\theta \leftarrow \theta - \alpha(\nabla + \lambda\theta)`.

    Args: ``lr`` (required), ``weight_decay=0``; and the common ones of :class:`Optimizer`.
    """  # noqa: E501

    rule_name = "sgd"
    _defaults: ClassVar[dict] = {"lr": None, "weight_decay": 0.0}
    _check = staticmethod(functional.check_sgd)

    def __init__(self, params, *, lr: float, weight_decay: float = 0.0, **common):
        super().__init__(params, lr=lr, weight_decay=weight_decay, **common)


class Momentum(Optimizer):
    r"""Momentum: :math:`v \leftarrow \beta v + (1-d)g,\ \theta \leftarrow \theta - \alpha v`.

    ``dampening=None`` is the lecture's EWA form (:math:`d=\beta`); ``0`` is torch's SGD momentum.
    """

    rule_name = "momentum"
    _defaults: ClassVar[dict] = {"lr": None, "beta": 0.9, "dampening": None,
                                 "nesterov": False, "weight_decay": 0.0}
    _check = staticmethod(functional.check_momentum)

    def __init__(self, params, *, lr: float, beta: float = 0.9, dampening: float | None = None,
                 nesterov: bool = False, weight_decay: float = 0.0, **common):
        super().__init__(params, lr=lr, beta=beta, dampening=dampening, nesterov=nesterov,
                         weight_decay=weight_decay, **common)


class RMSprop(Optimizer):
    r"""RMSprop: :math:`s \leftarrow \beta s + (1-\beta)g^2`, :math:`\theta \leftarrow \theta - \alpha g/(\sqrt s+\epsilon)`."""  # noqa: E501

    rule_name = "rmsprop"
    _defaults: ClassVar[dict] = {"lr": None, "beta": 0.99, "eps": 1e-8, "weight_decay": 0.0}
    _check = staticmethod(functional.check_rmsprop)

    def __init__(self, params, *, lr: float, beta: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, **common):
        super().__init__(params, lr=lr, beta=beta, eps=eps, weight_decay=weight_decay, **common)


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, eps outside the sqrt, bias correction folded into the step size).

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1)g,\quad v \leftarrow \beta_2 v + (1-\beta_2)g^2,\quad
        \theta \leftarrow \theta - \alpha\,\frac{m/(1-\beta_1^t)}{\sqrt{v/(1-\beta_2^t)}+\epsilon}
    """

    rule_name = "adam"
    _defaults: ClassVar[dict] = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                 "weight_decay": 0.0, "decoupled_weight_decay": False,
                                 "bias_correction": True}
    _check = staticmethod(functional.check_adam)

    def __init__(self, params, *, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0, **common):
        common.setdefault("decoupled_weight_decay", type(self)._defaults["decoupled_weight_decay"])
        super().__init__(params, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                         weight_decay=weight_decay, **common)


class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay, :math:`\theta \leftarrow \theta(1-\alpha\lambda)` first."""  # noqa: E501

    _defaults: ClassVar[dict] = {**Adam._defaults, "decoupled_weight_decay": True,
                                 "weight_decay": 1e-2}

    def __init__(self, params, *, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 1e-2, **common):
        super().__init__(params, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                         weight_decay=weight_decay, **common)


# ------------------------------------------------------------------------ files
def save(path: str | os.PathLike, opt: Optimizer) -> None:
    """Write ``opt.state_dict()`` to ``path`` (.npz), atomically.

    The file is written under a temporary name in the same folder and renamed
    into place, so ``path`` never holds half a checkpoint.
    """
    state = opt.state_dict()
    arrays = {}
    meta = {k: v for k, v in state.items() if k != "groups"}
    meta["groups"] = []
    for gi, group in enumerate(state["groups"]):
        meta["groups"].append({"hyper": group["hyper"], "shapes": group["shapes"],
                               "dtypes": group["dtypes"], "state": sorted(group["state"])})
        for k, p in enumerate(group["params"]):
            arrays[f"g{gi}.params.{k}"] = p
        for state_name, values in group["state"].items():
            for k, v in enumerate(values):
                arrays[f"g{gi}.{state_name}.{k}"] = v
    arrays["__meta__"] = np.array(json.dumps(meta))
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fusedopt-", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike, opt: Optimizer) -> None:
    """Read a checkpoint written by :func:`save` into ``opt`` (on its own device).

    A corrupt, truncated or mismatched file raises ``ValueError`` and leaves
    ``opt`` as it was.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            entries = {key: archive[key] for key in archive.files}  # reads (and CRC-checks) all
        meta = json.loads(str(entries.pop("__meta__")))
        groups = []
        for gi, group in enumerate(meta["groups"]):
            n = len(group["shapes"])
            groups.append({
                "hyper": group["hyper"], "shapes": group["shapes"], "dtypes": group["dtypes"],
                "params": [entries[f"g{gi}.params.{k}"] for k in range(n)],
                "state": {s: [entries[f"g{gi}.{s}.{k}"] for k in range(n)]
                          for s in group["state"]},
            })
        state = {**{k: v for k, v in meta.items() if k != "groups"}, "groups": groups}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"load: {path} is not a readable fusedopt checkpoint (corrupt, "
                         f"truncated or not a checkpoint): {type(exc).__name__}: {exc}") from exc
    opt.load_state_dict(state)


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "momentum": Momentum, "rmsprop": RMSprop,
                                          "adam": Adam, "adamw": AdamW}
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.1, "rmsprop": 1e-3, "adam": 1e-3, "adamw": 1e-3}


def make_optimizer(name: str, params, *, lr: float | None = None, **kwargs) -> Optimizer:
    """An optimizer by name (``"sgd"``, ``"momentum"``, ``"rmsprop"``, ``"adam"``, ``"adamw"``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=DEFAULT_LR[name] if lr is None else lr, **kwargs)
