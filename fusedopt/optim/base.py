"""The stateful optimizer: state, step count, schedules, clipping, non-finite steps.

An optimizer owns the state of its rule (``velocity``, ``sq_avg``,
``exp_avg``/``exp_avg_sq``, ...), allocated on the parameters' device and
dtype at the first step, and calls the same fused kernels as the functional API.
Its class, hyperparameters and state all come from the rule's registry entry
(:mod:`fusedopt.kernels.registry`); :mod:`fusedopt.optim.classes` generates one
class per registered optimizer.

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
``capturable=True`` does all of it on the device, with no host sync
(:mod:`fusedopt.optim.device_step`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from fusedopt import _checks, backends
from fusedopt.arena import ParamArena
from fusedopt.backends.base import ScalarRangeError, clip_scale, norm_from_sums
from fusedopt.kernels import Hyper, Rule, Variant
from fusedopt.kernels.dtypes import STATE_DTYPES
from fusedopt.kernels.registry import GRAD_SCALE, flag
from fusedopt.optim import device_step, launches, messages
from fusedopt.optim.checkpoint import Checkpointing
from fusedopt.optim.counters import Counters
from fusedopt.optim.groups import ParamGroup
from fusedopt.optim.units import checked_units

_GROUP_KEYS = {"params", "schedule"}


def _state_dtype(name: str, value) -> str | None:
    """``state_dtype`` as a storage name: None (the parameters' own, float32 for 16-bit ones),
    ``"float32"`` or ``"bfloat16"``."""
    if value is None:
        return None
    text = getattr(value, "__name__", None) or getattr(value, "name", None) or value
    if not isinstance(text, str):
        raise TypeError(f"{name}: state_dtype must be None, 'float32' or 'bfloat16', not "
                        f"{type(value).__name__}")
    if text not in STATE_DTYPES:
        raise ValueError(f"{name}: state_dtype={value!r}; choose None (the parameters' dtype; "
                         "float32 for 16-bit parameters), 'float32' or 'bfloat16'")
    return text


class Optimizer(Counters, Checkpointing):
    """Base class: see the module docstring. Subclasses set ``variant``."""

    variant: ClassVar[Variant]
    #: set by :mod:`fusedopt.optim.parallel`: the norm accumulators summed across ranks,
    #: and each parameter's first element's index in the whole model
    _reduce_totals: ClassVar[Callable[[list[float]], list[float]] | None] = None
    _firsts: ClassVar[list[int] | None] = None

    def __new__(cls, params=None, *args, comm=None, shard_state: bool = False, **kwargs):
        """With ``comm`` (or ``shard_state=True``): a data-parallel or ZeRO-1 optimizer
        (:class:`fusedopt.optim.parallel.ParallelOptimizer`) whose local update is this
        class's."""
        if comm is None and shard_state is False:
            return super().__new__(cls)
        from fusedopt.optim.parallel import ParallelOptimizer

        return ParallelOptimizer(cls, params, *args, comm=comm, shard_state=shard_state,
                                 **kwargs)

    @classmethod
    def hyper_specs(cls) -> tuple[Hyper, ...]:
        """The constructor's hyperparameters: the variant's (less ``grad_scale``, which the
        optimizer computes) and a flag per switch rule (``amsgrad``)."""
        specs = [h for h in cls.variant.hyper if h.name != GRAD_SCALE.name]
        for switch, rule in cls.variant.switches.items():
            specs.append(flag(switch, False, f"run {rule.name} instead "
                                             f"({rule.doc.splitlines()[0]})"))
        return tuple(specs)

    def __init__(self, params, *, schedule: Callable[[int], float] | None = None,
                 by: str = "epoch", max_grad_norm: float | None = None,
                 nonfinite: str | None = None, backend: str | None = None,
                 state_dtype: str | None = None, master_weights: bool = False,
                 stochastic_rounding: bool = False, seed: int = 0, comm=None,
                 shard_state: bool = False, capturable: bool = False, **hyper):
        name = type(self).__name__  # (comm and shard_state are __new__'s)
        state_dtype = _state_dtype(name, state_dtype)
        master_weights = _checks.flag(name, "master_weights", master_weights)
        stochastic_rounding = _checks.flag(name, "stochastic_rounding", stochastic_rounding)
        seed = _checks.seed(name, seed)
        capturable = _checks.flag(name, "capturable", capturable)
        hyper = self._without_fixed(hyper, name)
        specs = {h.name for h in self.hyper_specs()}
        unknown = set(hyper) - specs
        if unknown:
            raise TypeError(f"{name}: unknown argument(s) {sorted(unknown)}; "
                            f"{name} takes {sorted(specs)}")
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
        defaults = self._validate(hyper, name)
        self.groups: list[ParamGroup] = []
        # (lists and tuples first: an ABC check of an arena walks Sequence's subclasses and
        # grows their caches on every optimizer made)
        listed = isinstance(params, (list, tuple)) or (
            not isinstance(params, ParamArena) and isinstance(params, Sequence))
        specs_list = (list(params) if listed and params and isinstance(params[0], dict)
                      else [{"params": params}])
        for index, spec in enumerate(specs_list):
            if not isinstance(spec, dict) or "params" not in spec:
                raise TypeError(f"{name}: group {index} must be a dict with a 'params' entry")
            extra = set(spec) - _GROUP_KEYS - specs
            if extra:
                raise ValueError(f"{name}: group {index} has unknown key(s) {sorted(extra)}")
            group_hyper = self._validate(
                {**defaults, **{k: v for k, v in spec.items() if k in specs}},
                f"{name} group {index}")
            group_schedule = spec.get("schedule", schedule)
            if group_schedule is not None and not callable(group_schedule):
                raise TypeError(f"{name}: group {index} schedule must be callable")
            self.groups.append(ParamGroup(spec["params"], group_hyper, group_schedule,
                                          self.rule_for(group_hyper), index, name))
        kinds = {g.kind for g in self.groups}
        if len(kinds) > 1:
            raise TypeError(f"{name}: NumPy and CuPy parameters mixed; one optimizer, one device")
        kind = kinds.pop()
        # A tensor given twice (or two overlapping views) would be updated twice per step.
        _checks.no_overlap_among(name, "parameters", [p for g in self.groups
                                                      for p in g.unit_params])
        for gi, group in enumerate(self.groups):
            if state_dtype is not None and "float64" in group.unit_storage:
                raise ValueError(f"{name}: state_dtype={state_dtype!r}, but group {gi} has "
                                 "float64 parameters, whose state is float64; drop state_dtype "
                                 "or use float32 parameters")
        if capturable:
            device_step.refuse(name, [g.rule for g in self.groups], nonfinite=nonfinite,
                               stochastic_rounding=stochastic_rounding)
        self.state_dtype, self.master_weights = state_dtype, master_weights
        self.stochastic_rounding, self.seed = stochastic_rounding, seed
        self.backend = _checks.backend_for(name, kind, backend)
        if capturable and self.backend == "numpy":
            raise ValueError(f"{name}: capturable=True runs on the 'numba' or 'cupy' backend "
                             "(the reference backend reads its scalars on the host)")
        self._impl = backends.get(self.backend)
        self._xp = np if kind == "numpy" else __import__("cupy")
        self._layout: tuple | None = None  # the step's launches (optim.launches), kept
        self._written: tuple | None = None  # the arrays a step writes, by owner, kept
        self._seen = launches.SeenGrads()  # the last step's gradients, checked
        self._generation: int | None = None  # the step's, where its gradients are seen
        self.capturable = capturable
        self._device_counts = (device_step.counters(self._xp, self.groups) if capturable
                               else None)
        self._calls = 0  # step() calls: a capturable step's schedule runs by them
        self.step_count = 0
        self.epoch = 1
        self.skipped_steps = 0
        self.last_grad_norm: float | None = None

    # ---------------------------------------------------------------- hyperparameters
    @property
    def rule(self) -> Rule:
        """The rule of the first group (groups may differ by a switch such as ``amsgrad``)."""
        return self.groups[0].rule

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.rule.state

    def rule_for(self, hyper: dict) -> Rule:
        """The rule checked ``hyper`` selects: a switch rule when its flag is set."""
        for switch, rule in self.variant.switches.items():
            if hyper.get(switch):
                return rule
        return self.variant.rule

    def _without_fixed(self, hyper: dict, where: str) -> dict:
        """``hyper`` less the variant's fixed values (AdamW's decoupling), which may be given
        only as they are."""
        out = dict(hyper)
        for key, value in self.variant.fixed.items():
            if key in out:
                given = out.pop(key)
                if given is not value and given != value:
                    raise ValueError(f"{where}: {key}={given!r}, but {type(self).__name__} always "
                                     f"has {key}={value!r}; use fo."
                                     f"{self.variant.rule.optimizer or self.variant.rule.name} "
                                     "to choose it")
        return out

    def _validate(self, hyper: dict, where: str) -> dict:
        """``hyper`` checked against :meth:`hyper_specs` (defaults filled in; named errors)."""
        return _checks.hyperparameters(where, self.hyper_specs(), hyper)

    def _launch_hyper(self, group: ParamGroup, lr: float, scale: float, step: int) -> dict:
        """The hyperparameters the rule's host scalars take for this step."""
        hyper = {k: v for k, v in group.hyper.items() if k not in self.variant.switches}
        hyper.update(self.variant.fixed, lr=lr, grad_scale=scale)
        if group.rule.needs_step:
            hyper["step"] = step
        return hyper

    def _lr(self, group: ParamGroup, step: int) -> float:
        if group.schedule is None:
            return group.hyper["lr"]
        t = self.epoch if self.by == "epoch" else step
        return _checks.real(type(self).__name__, f"schedule({t})", group.schedule(t), 0.0)

    @property
    def lr(self) -> float:
        """The learning rate the next step uses (of the first group)."""
        return self._lr(self.groups[0], (self._calls if self.capturable else self.step_count) + 1)

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
        """Per group, the (param, grad) pairs to launch over, every check done before any
        write (:func:`fusedopt.optim.units.checked_units`)."""
        return checked_units(self, grads)

    def step(self, grads=None, *, grad_scale: float = 1.0) -> bool | None:
        """One update of every parameter; returns False when a non-finite step was skipped
        (None with ``capturable=True``: the device decides, and the host does not wait).

        Args:
            grads: one gradient per parameter, in order (NumPy/CuPy arrays or DLPack
                tensors); ``None`` when the parameters are ParamArenas, whose
                ``arena.grads`` are used.
            grad_scale: a factor :math:`s > 0` the update multiplies every gradient by,
                inside the fused pass (an inverse loss scale; ``1/W`` to average W
                summed gradients); clipping and the non-finite check see :math:`s g`.
        """
        if grad_scale != 1.0 or type(grad_scale) is not float:
            grad_scale = _checks.real(f"{type(self).__name__}.step", "grad_scale", grad_scale,
                                      0.0, lo_open=True)
        units = self._units(grads)
        if self.capturable:
            return device_step.step(self, units, grad_scale)
        t = self.step_count + 1
        if t > _checks.MAX_COUNT:  # the checkpoint of a later step could not be loaded
            raise ValueError(f"{type(self).__name__}.step: the step count would pass 2**53, the "
                             "largest a checkpoint holds; start a new optimizer")
        lrs = [self._lr(group, t) for group in self.groups]  # a bad schedule fails here, first
        scale = 1.0
        if self.max_grad_norm is not None or self.nonfinite is not None:
            # One read of the gradients; on a GPU the partial sums stay on the device and the
            # host reads their total once.
            totals = [float(t) for t in launches.norm_totals(self._impl, units,
                                                              self._grad_storage)]
            if self._reduce_totals is not None:  # the other ranks' blocks (optim.parallel)
                totals = self._reduce_totals(totals)
            # inf only for NaN/inf, or a norm beyond float64
            norm = norm_from_sums(*totals) * grad_scale
            self.last_grad_norm = norm
            # The scaled accumulators stay finite for any finite gradients: finiteness is read
            # from them, not from the norm (finite gradients can have a norm beyond float64).
            if not all(math.isfinite(x) for x in totals):
                if self.nonfinite == "raise":
                    raise FloatingPointError(messages.nonfinite(self, units))
                if self.nonfinite == "skip":
                    self.skipped_steps += 1
                    warnings.warn(f"{type(self).__name__}: non-finite gradient, step "
                                  f"{self.step_count + 1} skipped ({self.skipped_steps} so far)",
                                  RuntimeWarning, stacklevel=2)
                    return False
            elif self.max_grad_norm is not None and norm + 1e-6 > self.max_grad_norm:
                scale = (self.max_grad_norm / (norm + 1e-6) if math.isfinite(norm)
                         else clip_scale(self.max_grad_norm, totals) / grad_scale)
        runs = self._runs()
        impl = self._impl
        rounding = (self.seed, t)
        hypers = [self._launch_hyper(group, lr, scale * grad_scale, t)
                  for group, lr in zip(self.groups, lrs, strict=True)]
        prepared: dict[tuple, tuple] = {}  # everything prepared before the first write
        for run in runs:
            if (run.group, run.key) not in prepared:
                try:
                    prepared[run.group, run.key] = impl.prepare(run.rule, hypers[run.group],
                                                                run.signature, rounding)
                except ScalarRangeError as exc:
                    raise ValueError(f"{type(self).__name__}.step: {exc}") from None
        device_id = None if self._xp is np else self.groups[0].unit_params[0].device.id
        for run in runs:
            launches.launch(impl, run, units[run.group], prepared[run.group, run.key],
                            device_id, self._generation)
        self.step_count = t
        return True

    def _runs(self) -> list:
        """The step's launches (:mod:`fusedopt.optim.launches`), the state allocated first;
        kept while the groups, their state and the gradients' storage stay the same."""
        for group in self.groups:
            if group.state is None:
                group.allocate(self._xp, self.state_dtype, self.master_weights)
        cached = self._layout  # (identity, stochastic, gradient storages, runs)
        if (cached is None or not launches.same(cached[0], self.groups)
                or cached[1] != self.stochastic_rounding or cached[2] != self._grad_storage):
            storages = [list(s) for s in self._grad_storage]
            cached = self._layout = (launches.identity(self.groups), self.stochastic_rounding,
                                     storages, launches.layout(self.groups, storages,
                                                               self.stochastic_rounding,
                                                               self._firsts))
        return cached[3]
