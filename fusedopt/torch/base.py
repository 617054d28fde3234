"""The shared machinery of fusedopt's ``torch.optim.Optimizer`` subclasses.

A step, per parameter group:

1. every parameter with a gradient is checked (dtype, device, layout, sparsity)
   before anything is written, in every group;
2. state is made lazily in torch's format (``state[p]["step"]``, ``"exp_avg"``, ...);
3. tensors sharing a device, storage dtypes and step count form one bucket; a CPU
   bucket is **one compiled call** over a table of the tensors' ``data_ptr()``\\ s
   (:func:`fusedopt.backends.numba_cpu.launch_rows`), a CUDA bucket runs the
   generated CUDA kernel per tensor (:mod:`fusedopt.functional`);
4. the step counts advance: each parameter's ``state["step"]`` is a 0-d view into one
   float32 tensor per group, so a bucket's counts move with one ``add_`` (a
   ``torch._foreach_add_`` over 157 scalar tensors costs 0.6 ms on the CPU).

``torch.amp.GradScaler`` sees ``_step_supports_amp_scaling`` and hands the step its
scale and ``found_inf`` as tensors: the gradients are unscaled inside the update
(``grad_scale = 1/scale``) and a step with an infinite gradient is skipped, its
step count unchanged, as torch's fused optimizers do.

``capturable=True`` (Adam, AdamW, RMSprop, Lion) reads nothing on the host: see
:mod:`fusedopt.torch.capturable`.
"""

from __future__ import annotations

import math
from itertools import accumulate
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from fusedopt import _checks
from fusedopt.backends import numba_cpu
from fusedopt.backends.base import ScalarRangeError
from fusedopt.kernels.dtypes import homogeneous, signature
from fusedopt.kernels.registry import Rule
from fusedopt.torch import capturable, checks, hooks, memo, steps
from fusedopt.torch.dtypes import LOW, STATE_DTYPES, STORAGE
from fusedopt.torch.options import PRECISION_KEYS

#: the state of a parameter before its first step, as the rule hooks read it
_NEW_STATE = MappingProxyType({"step": 0.0})


class FusedOptimizer(torch.optim.Optimizer):
    """Base of :mod:`fusedopt.torch`'s optimizers (see the module docstring)."""

    _step_supports_amp_scaling = True
    #: rule array name -> torch state key, for every state array of every rule used
    STATE_KEYS: ClassVar[dict[str, str]] = {}
    #: run every tensor through the functional API (the CUDA route), even on the CPU
    _per_tensor = False

    # ------------------------------------------------------------ subclass hooks
    def _rule_hyper(self, group: dict, state: dict) -> tuple[Rule, dict]:
        """The rule and its hyperparameters (without step and grad_scale) for a parameter
        whose state is ``state`` (its first step has ``"step"`` at 0)."""
        raise NotImplementedError

    def _after_step(self, group: dict, params: list, states: list, step: int) -> None:
        """Per bucket, after its update (NAdam's ``mu_product``)."""

    def _after_capturable_step(self, group: dict, states: list,
                               found_inf: torch.Tensor | None) -> Any:
        """Per capturable bucket, prepared before any write: None, or what to run after
        its update, on the device (NAdam's ``mu_product``)."""
        return None

    def add_param_group(self, param_group: dict) -> None:
        """torch's, then the group's hyperparameters checked against the rule's ranges (a
        group may override them): what fusedopt refuses where torch does not (``eps=0``,
        which divides 0 by 0 for a zero gradient) is refused here, naming it, not at the
        first step."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key in (*PRECISION_KEYS, "capturable"):
            group.setdefault(key, self.defaults.get(key, False))
        try:
            rule, hyper = self._rule_hyper(group, _NEW_STATE)
            if group["capturable"]:
                capturable.refuse(type(self).__name__, rule)
                if group["stochastic_rounding"]:
                    raise ValueError(f"{type(self).__name__}: capturable=True cannot round "
                                     "stochastically (its bits come from the host's step "
                                     "count); leave one of them off")
            lr = as_float(type(self).__name__, "lr", group["lr"])
            _checks.hyperparameters(type(self).__name__, rule.hyper,
                                    dict(hyper, lr=lr, grad_scale=1.0))
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    # --------------------------------------------------------------- the step
    @hooks.hooked  # torch's hooks; its profiler range only while profiling
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One update of every parameter with a gradient (see the module docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        name = type(self).__name__
        found_inf = getattr(self, "found_inf", None)
        grad_scale = getattr(self, "grad_scale", None)
        unscale = 1.0
        if not all(group.get("capturable") for group in self.param_groups):  # host reads
            if found_inf is not None and float(found_inf) != 0.0:
                return loss  # GradScaler: an inf/NaN gradient; nothing moves, not the step
            unscale = 1.0 if grad_scale is None else 1.0 / float(grad_scale)
            if not math.isfinite(unscale):
                raise ValueError(f"{name}.step: the grad scale {float(grad_scale)!r} has no "
                                 "finite inverse")
        work = []  # everything checked before the first write
        for gi, group in enumerate(self.param_groups):
            buckets = self._grouped(name, gi, group)
            if buckets:
                work.append((group, buckets))
        launches = []
        offset = 0
        for group, buckets in work:
            lr = group["lr"]
            on_device = group["capturable"] and isinstance(lr, torch.Tensor)
            lr = 0.0 if on_device else as_float(f"{name}.step", "lr", lr)  # 0 stands in for it
            for key, (members, states, addresses, counts) in buckets.items():
                rule, hyper = self._rule_hyper(group, states[0])
                sign = -1.0 if group.get("maximize", False) else 1.0
                hyper = _checks.hyperparameters(f"{name}.step", rule.hyper,
                                                dict(hyper, lr=lr, grad_scale=sign * unscale))
                if group["capturable"]:
                    run = capturable.plan(
                        f"{name}.step", rule, hyper, key[0], storage_signature(rule, *key[1:4]),
                        states, addresses, group["lr"] if on_device else lr,
                        sign if grad_scale is None else sign / grad_scale.double(), found_inf)
                    after = self._after_capturable_step(group, states, found_inf)
                    launches.append((run if after is None else capturable.then(run, after),
                                     group, members, states, None))
                    continue
                sizes = addresses[1]  # each tensor's first element's place in the model:
                offsets = tuple(accumulate(sizes[:-1], initial=offset))
                offset += sum(sizes)
                launches.append((*self._plan(name, rule, hyper, group, members, states, key,
                                             offsets, addresses), counts))
        for run, group, members, states, step, *counts in launches:  # nothing written yet
            run()
            if step is not None:  # the capturable runs advance their counts themselves
                if counts[0] is not None:  # the bucket's counts: one tensor's elements
                    counts[0].add_(1.0)
                else:
                    steps.advance([s["step"] for s in states])
                self._after_step(group, members, states, step + 1)
        return loss

    def _grouped(self, name: str, gi: int, group: dict) -> dict:
        """``{bucket key: (params, their states, (their addresses, sizes), counts)}`` for
        the group's parameters with a gradient, every one checked; ``counts``: the one
        tensor whose elements are the bucket's step counts, in order, or None.

        The checks, the grouping and the addresses are kept in a
        :class:`~fusedopt.torch.memo.Memo`: a training loop hands the same tensors every
        step, and a step the memo recognises, with step counts advanced alike, reuses them
        (157 tensors: 0.3 ms of looking instead of 1.7 ms of checks on a CPU).
        """
        group_params = group["params"]
        grads = list(map(memo.GRAD, group_params))
        verified = self.__dict__.setdefault("_verified", {})  # not in torch's pickled state
        kept = verified.get(gi)
        keys = self._state_keys(group)
        if kept is not None:
            found = kept.recall(group_params, grads, self.state, keys, not group["capturable"])
            if found is not None:
                return found
            del verified[gi]
        params = [p for p, g in zip(group_params, grads, strict=True) if g is not None]
        if not params:
            return {}
        storages = self._checked(name, gi, group, params)
        buckets = self._buckets(group, params, storages)
        states = [self.state[p] for p in params]
        counts = None if group["capturable"] else steps.read([s["step"] for s in states])
        grouped = {key: (members, member_states, _rows(members, member_states, keys, key[3]),
                         None)
                   for key, (members, member_states) in buckets.items()}
        verified[gi] = memo.record(group_params, grads, params, states, keys, grouped, counts)
        return grouped

    def _checked(self, name: str, gi: int, group: dict, params: list) -> list[str]:
        return checks.params(name, gi, params)

    def _state_storage(self, group: dict, storage: str) -> str:
        if storage == "float64":
            return "float64"
        chosen = group["state_dtype"]
        if chosen is not None:
            return chosen
        return storage

    def _buckets(self, group: dict, params: list, storages: list) -> dict:
        """Lazily made state, then ``{key: (params, their states)}``: the params grouped by
        what one launch must share (each state looked up once: a tensor's hash is Python)."""
        all_states = [self.state[p] for p in params]
        fresh = [(p, s) for p, s in zip(params, all_states, strict=True) if not s]
        for p, _ in fresh:
            self._init_state(group, p)
        if fresh:
            steps.pack([s for _, s in fresh])
        state_storages = self._checked_states(group, params, all_states, storages)
        counts = ([0] * len(params) if group["capturable"]  # on the device: not read
                  else steps.read([s["step"] for s in all_states]))
        buckets: dict[tuple, tuple[list, list]] = {}
        for p, state, storage, state_storage, step in zip(params, all_states, storages,
                                                           state_storages, counts, strict=True):
            key = (p.device, storage, state_storage, "master" in state, int(step))
            found = buckets.get(key)
            if found is None:
                buckets[key] = found = ([], [])
            found[0].append(p)
            found[1].append(state)
        return buckets

    def _checked_states(self, group: dict, params: list, states: list,
                        storages: list) -> list[str]:
        """Each parameter's state storage, from its state tensors (see
        :func:`fusedopt.torch.checks.states`)."""
        return checks.states(type(self).__name__, self._state_keys(group),
                             group["state_dtype"], params, states, storages)

    def _init_state(self, group: dict, p: torch.Tensor) -> None:
        state = self.state[p]
        state["step"] = torch.zeros((), dtype=torch.float32,
                                    device=p.device if group["capturable"] else None)
        storage = STORAGE[p.dtype]
        dtype = STATE_DTYPES.get(self._state_storage(group, storage), p.dtype) \
            if storage != "float64" else torch.float64
        if group["state_dtype"] is None:
            dtype = p.dtype
        for key in self._state_keys(group):
            state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.contiguous_format)
        if group["master_weights"] and storage in LOW:
            state["master"] = p.detach().to(torch.float32).contiguous()

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        rule, _ = self._rule_hyper(group, _NEW_STATE)
        return tuple(self.STATE_KEYS[a] for a in rule.state)

    def _plan(self, name, rule, hyper, group, members, states, key, offsets,
              addresses) -> tuple:
        """``(run, group, members, states, step)``: everything checked and prepared, the
        writes left to ``run()``."""
        device, storage, state_storage, master, step = key
        state_keys = [self.STATE_KEYS[a] for a in rule.state]
        stochastic = group["stochastic_rounding"] and (storage in LOW or state_storage in LOW)
        rounding = (group["seed"], step + 1) if stochastic else None
        if rule.needs_step:
            hyper = dict(hyper, step=step + 1)
        if not self._per_tensor:
            sig = storage_signature(rule, storage, state_storage, master, stochastic)
            impl = numba_cpu if device.type == "cpu" else _cuda_backend()
            try:
                prepared = impl.prepare(rule, hyper, sig, rounding)
            except ScalarRangeError as exc:
                raise ValueError(f"{name}.step: {exc}") from None
            rows, sizes = addresses
            if device.type == "cpu":
                def run():
                    numba_cpu.launch_rows(rule, rows, sizes, prepared, offsets)
            else:
                def run():
                    import cupy

                    # on torch's current stream: ordered after the backward that wrote the
                    # gradients, before whatever the caller queues next
                    stream = torch.cuda.current_stream(device)
                    with cupy.cuda.ExternalStream(stream.cuda_stream, device.index or 0):
                        impl.launch_rows(rule, rows, sizes, prepared, offsets, device.index or 0)
            return run, group, members, states, step
        from fusedopt import functional

        function = functional.FUNCTIONS[rule.name + "_"]
        extra: dict[str, Any] = {}
        if rounding is not None:
            extra.update(stochastic_rounding=True, seed=group["seed"])
            if not rule.needs_step:
                extra["step"] = step + 1

        def run_each():
            for p, s, first in zip(members, states, offsets, strict=True):
                arrays = (p.detach(), p.grad, *(s[k] for k in state_keys))
                function(*arrays, **hyper, master=s.get("master") if master else None,
                         rounding_offset=first if rounding is not None else 0, **extra)
        return run_each, group, members, states, step

    # ---------------------------------------------------------- checkpoints
    def load_state_dict(self, state_dict: dict) -> None:
        """torch's format, from fusedopt or torch.optim.

        fusedopt's param-group keys are filled in where a torch.optim checkpoint has none.
        torch casts every loaded state tensor to its parameter's dtype; here each is taken
        from the checkpoint as saved and given the group's state dtype (float32 for the
        master copy), so a bf16 model's float32 master copy comes back exactly.
        """
        saved = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key in (*PRECISION_KEYS, "capturable"):
                group.setdefault(key, self.defaults.get(key, False))
        owner = {p: group for group in self.param_groups for p in group["params"]}
        params = [p for group in self.param_groups for p in group["params"]]
        for index, p in zip(saved_ids, params, strict=True):
            if index not in saved or not self.state.get(p):
                continue
            self._restore(owner[p], p, self.state[p], saved[index])
        for group in self.param_groups:
            states = [self.state[p] for p in group["params"] if self.state.get(p)]
            if states:
                steps.pack(states)

    def _restore(self, group: dict, p: torch.Tensor, state: dict, saved: dict) -> None:
        step = saved.get("step")
        if step is None:  # torch's SGD keeps none: a state is past its first step
            state["step"] = torch.ones((), dtype=torch.float32)
        else:
            state["step"] = torch.as_tensor(step, dtype=torch.float32).reshape(()).to(
                p.device if group["capturable"] else "cpu", copy=True)
        storage = STORAGE.get(p.dtype)
        wanted = self._state_storage(group, storage)
        dtype = STATE_DTYPES.get(wanted, p.dtype) if group["state_dtype"] else p.dtype
        for key in self._state_keys(group):
            value = saved.get(key)
            state[key] = (torch.zeros_like(p, dtype=dtype) if value is None
                          else value.to(device=p.device, dtype=dtype, copy=True).contiguous())
        if group["master_weights"] and storage in LOW:
            value = saved.get("master")
            state["master"] = (p.detach().to(torch.float32) if value is None
                               else value.to(device=p.device, dtype=torch.float32, copy=True)
                               ).contiguous()
        if "mu_product" in saved:  # on the device for a capturable step, as torch keeps it
            state["mu_product"] = torch.as_tensor(saved["mu_product"]).to(
                p.device if group["capturable"] else "cpu", copy=True)


def storage_signature(rule: Rule, storage: str, state_storage: str, master: bool,
                      stochastic: bool = False):
    """The kernel signature of a bucket: its parameters' and state's storage."""
    if not master and storage == state_storage and storage not in LOW:
        return homogeneous(rule.arrays, storage)
    return signature(rule.arrays, [storage, storage] + [state_storage] * len(rule.state),
                     writes=rule.writes, master=master, stochastic=stochastic)


def _rows(members: list, states: list, keys: tuple[str, ...], master: bool) -> tuple:
    """``(rows, sizes)``: each member's addresses as a launch takes them (parameter,
    gradient, state in ``keys``' order (the rule's), master copy), and its size."""
    keys = (*keys, "master") if master else keys
    return (tuple((p.data_ptr(), p.grad.data_ptr(), *[s[k].data_ptr() for k in keys])
                  for p, s in zip(members, states, strict=True)),
            tuple([p.numel() for p in members]))


def _cuda_backend():
    from fusedopt.backends import cupy_cuda

    return cupy_cuda


def as_float(name: str, what: str, value) -> float:
    """A hyperparameter that may be a tensor (torch allows a tensor ``lr``) as a float."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: {what} must be a scalar tensor, not {tuple(value.shape)}")
        return float(value)
    return value


__all__ = [
    "STATE_DTYPES",
    "STORAGE",
    "FusedOptimizer",
    "as_float",
]
