"""Checkpoints: ``state_dict``/``load_state_dict`` and atomic ``.npz`` files.

Everything needed to resume bit-identically: the counters, each group's
hyperparameters, parameters and state (as NumPy copies, so a GPU checkpoint
loads on a CPU and back). Loading checks everything, and moves every array to
the device, before the first write: a mismatch is a ``ValueError`` and changes
nothing.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from fusedopt import _checks
from fusedopt.kernels.dtypes import LOW_PRECISION
from fusedopt.optim import npz
from fusedopt.optim.groups import bits, decoded, on_device, state_storage, to_host


def _kernel_dtype(storage: str) -> np.dtype:
    """How an array of ``storage`` is held (and saved): 16-bit ones as uint16 patterns."""
    return np.dtype(np.uint16) if storage in LOW_PRECISION else np.dtype(storage)

FORMAT, VERSION = "fusedopt.optimizer", 1


class Checkpointing:
    """``state_dict`` and ``load_state_dict`` of :class:`fusedopt.Optimizer`."""

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
                     "dtypes": list(group.storage),  # 16-bit arrays are saved as bit patterns
                     "params": [to_host(bits(t, s)) for t, s in
                                zip(group.tensors, group.storage, strict=True)], "state": {}}
            if group.state is not None:
                for k, state_name in enumerate(group.state_names):
                    entry["state"][state_name] = [to_host(v) for v in group.state_views(k)]
                entry["state_dtypes"] = self._state_storages(group)
                masters = group.master_views()
                if masters is not None and any(m is not None for m in masters):
                    entry["master"] = [None if m is None else to_host(m) for m in masters]
            groups.append(entry)
        return {"format": FORMAT, "version": VERSION, "optimizer": type(self).__name__,
                "step": self.step_count, "epoch": self.epoch,
                "skipped_steps": self.skipped_steps, "precision": self._precision(),
                "groups": groups}

    def _precision(self) -> dict:
        return {"state_dtype": self.state_dtype, "master_weights": self.master_weights,
                "stochastic_rounding": self.stochastic_rounding, "seed": self.seed}

    def _state_storages(self, group) -> list[str]:
        """Each tensor's state storage name."""
        return [state_storage(s, self.state_dtype) for s in group.storage]

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; a mismatch is a ValueError and changes nothing."""
        name = type(self).__name__
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{name}.load_state_dict: not a fusedopt optimizer state")
        if state.get("version") != VERSION:
            raise ValueError(f"{name}.load_state_dict: state version {state.get('version')!r}; "
                             f"this fusedopt reads version {VERSION}")
        if state.get("optimizer") != name:
            raise ValueError(f"{name}.load_state_dict: the state is of a "
                             f"{state.get('optimizer')!r} optimizer, not {name!r}")
        counters = {}
        for key, lo in (("step", 0), ("epoch", 1), ("skipped_steps", 0)):
            value = state.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo \
                    or value > _checks.MAX_COUNT:
                raise ValueError(f"{name}.load_state_dict: {key}={_checks.short(value)} is "
                                 f"invalid; it must be an integer from {lo} to 2**53")
            counters[key] = int(value)
        precision = state.get("precision") or {"state_dtype": None, "master_weights": False,
                                                "stochastic_rounding": False, "seed": 0}
        if not isinstance(precision, dict):
            raise ValueError(f"{name}.load_state_dict: precision is not a dict")
        # How the run rounds is part of it: a different rounding is a different run. The seed
        # is the run's state, and comes from the checkpoint. (The state's dtypes are compared
        # per group, as stored.)
        for key, default in (("master_weights", False), ("stochastic_rounding", False)):
            if precision.get(key, default) != getattr(self, key):
                raise ValueError(f"{name}.load_state_dict: the state was saved with {key}="
                                 f"{precision.get(key, default)!r}, this optimizer has {key}="
                                 f"{getattr(self, key)!r}; construct it with {key}="
                                 f"{precision.get(key, default)!r}")
        try:
            seed = _checks.seed(name, precision.get("seed", 0))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}.load_state_dict: {exc}") from None
        groups = state.get("groups")
        if not isinstance(groups, list) or len(groups) != len(self.groups):
            raise ValueError(f"{name}.load_state_dict: the state has "
                             f"{len(groups) if isinstance(groups, list) else 'no'} group(s), "
                             f"this optimizer {len(self.groups)}")
        staged = [self._staged_group(f"{name}.load_state_dict: group {gi}", group, entry)
                  for gi, (group, entry) in enumerate(zip(self.groups, groups, strict=True))]
        if any(s[4] is not None for s in staged) and any(s[4] is None for s in staged):
            raise ValueError(f"{name}.load_state_dict: some groups have state and some not")
        # Everything checked and on the device: now write.
        for group, hyper, rule, params, state_arrays, masters in staged:
            group.hyper = hyper
            if rule is not group.rule:  # e.g. amsgrad switched: other state names
                group.rule, group.state = rule, None
            for dst, storage, src in zip(group.tensors, group.storage, params, strict=True):
                bits(dst, storage)[...] = src
            if state_arrays is None:
                group.state, group.master = None, None
                continue
            if group.state is None:
                group.allocate(self._xp, self.state_dtype, self.master_weights)
            for k, state_name in enumerate(group.state_names):
                for dst, src in zip(group.state_views(k), state_arrays[state_name], strict=True):
                    dst[...] = src
            for dst, src in zip(group.master_views() or [], masters or [], strict=False):
                if dst is not None and src is not None:
                    dst[...] = src
        self.seed = seed
        self.step_count = counters["step"]
        self.epoch = counters["epoch"]
        self.skipped_steps = counters["skipped_steps"]
        self._calls = counters["step"] + counters["skipped_steps"]  # every call applied or
        # skipped: a capturable optimizer's by="step" schedule goes on from there

    def _staged_group(self, where: str, group, entry) -> tuple:
        """(group, hyper, rule, params on device, state on device or None), all checked."""
        if not isinstance(entry, dict) or not isinstance(entry.get("hyper", {}), dict) \
                or not isinstance(entry.get("state") or {}, dict):
            raise ValueError(f"{where} is not a group's state (a dict with 'hyper', 'params' "
                             "and 'state')")
        # A checkpoint written before a switch existed has it off; one written when the
        # variant's fixed values (AdamW's decoupling) were stored holds them: drop them.
        hyper = {**{s: False for s in self.variant.switches}, **entry.get("hyper", {})}
        try:
            hyper = self._without_fixed(hyper, where)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if set(hyper) != set(group.hyper):
            raise ValueError(f"{where} hyperparameters {sorted(hyper)} are not "
                             f"{sorted(group.hyper)}")
        try:
            hyper = self._validate(hyper, where)
        except TypeError as exc:  # a wrong type in a file is a bad file: one error type
            raise ValueError(str(exc)) from exc
        rule = self.rule_for(hyper)
        saved_dtypes = entry.get("dtypes", group.storage)
        if list(saved_dtypes) != list(group.storage):
            raise ValueError(f"{where}: the parameters were saved as {list(saved_dtypes)}, this "
                             f"optimizer's are {group.storage}")
        shapes = [tuple(t.shape) for t in group.tensors]
        devices = group.tensors
        params = self._staged_arrays(where, "params", entry.get("params"), shapes,
                                     [_kernel_dtype(s) for s in group.storage], devices)
        saved_state = entry.get("state") or {}
        # allocated: the optimizer had stepped (a stateless rule saves no arrays, but its
        # state dtypes and master copies all the same)
        allocated = bool(saved_state) or "state_dtypes" in entry
        if saved_state and set(saved_state) != set(rule.state):
            raise ValueError(f"{where}: state {sorted(saved_state)} is not {sorted(rule.state)}")
        held = self._state_storages(group)
        saved_state_dtypes = entry.get("state_dtypes") or [state_storage(s, None)
                                                            for s in group.storage]
        if allocated and list(saved_state_dtypes) != held:
            raise ValueError(f"{where}: the state was saved as {list(saved_state_dtypes)}, this "
                             f"optimizer holds it as {held}; construct it with the "
                             "state_dtype it was saved with")
        state_dtypes = [_kernel_dtype(s) for s in held]
        state_arrays = ({k: self._staged_arrays(where, k, saved_state.get(k), shapes,
                                                state_dtypes, devices)
                         for k in rule.state} if allocated else None)
        masters = None
        wanted = [s in LOW_PRECISION for s in group.storage] if self.master_weights else []
        if allocated and any(wanted):
            saved = entry.get("master")
            if not isinstance(saved, list) or len(saved) != len(shapes) or any(
                    (m is None) == w for m, w in zip(saved, wanted, strict=True)):
                raise ValueError(f"{where}: the master copies of the 16-bit parameters are "
                                 "missing or misplaced")
            masters = self._staged_arrays(where, "master", saved, shapes,
                                          [np.dtype(np.float32)] * len(shapes), devices,
                                          optional=True)
        storages = self._state_storages(group)
        values = ({k: [decoded(self._xp, a, s) if s in LOW_PRECISION else a
                       for a, s in zip(arrays, storages, strict=True)]
                   for k, arrays in state_arrays.items()} if state_arrays else None)
        for k in rule.nonnegative if state_arrays else ():
            for i, a in enumerate(values[k]):
                if a.size and bool((a < 0).any()):  # a sum of squares: the next step gives NaN
                    raise ValueError(f"{where}: {k}[{i}] has negative values; it is an average "
                                     "of squares, never negative (a damaged or edited state)")
        # NaN or inf state is what a step on non-finite gradients leaves (without the
        # nonfinite= check): loaded as saved, so a resumed run is the run, but said aloud.
        for k in rule.state if state_arrays else ():
            for i, a in enumerate(values[k]):
                if a.size and not bool(np.isfinite(a).all()):
                    warnings.warn(f"{where}: {k}[{i}] holds NaN or inf values; the next step "
                                  "makes those parameters non-finite (use nonfinite='skip' to "
                                  "keep a diverging step out of the state)", RuntimeWarning,
                                  stacklevel=4)
        return group, hyper, rule, params, state_arrays, masters

    def _staged_arrays(self, where: str, what: str, arrays, shapes: list, dtypes: list,
                       devices: list, optional: bool = False) -> list:
        if not isinstance(arrays, list) or len(arrays) != len(shapes):
            raise ValueError(f"{where}: {what} has {len(arrays) if isinstance(arrays, list) else 0}"
                             f" arrays for {len(shapes)} parameters")
        out = []
        for k, (a, shape, dtype, ref) in enumerate(zip(arrays, shapes, dtypes, devices,
                                                       strict=True)):
            if optional and a is None:
                out.append(None)
                continue
            if not isinstance(a, np.ndarray) and _checks.array_kind(a) != "cupy":
                raise ValueError(f"{where}: {what}[{k}] is not an array")
            if tuple(a.shape) != tuple(shape) or a.dtype != dtype:
                raise ValueError(f"{where}: {what}[{k}] is {a.dtype} {tuple(a.shape)} but the "
                                 f"optimizer holds {dtype} {tuple(shape)} there")
            with on_device(self._xp, ref):  # onto the parameter's own GPU
                out.append(self._xp.asarray(a))
        return out


# ------------------------------------------------------------------------ files
def save(path: str | os.PathLike, opt) -> None:
    """Write ``opt.state_dict()`` to ``path`` (.npz), atomically.

    The file is written under a temporary name in the same folder and renamed
    into place, so ``path`` never holds half a checkpoint; it gets the
    permissions any new file gets (the umask's).
    """
    if getattr(opt, "collective", False):  # a data-parallel or ZeRO-1 optimizer
        opt.save(path)
        return
    write(path, opt.state_dict())


def write(path: str | os.PathLike, state: dict) -> None:
    """Write a state dict (as ``state_dict()`` returns it) to ``path`` (.npz), atomically."""
    arrays = {}
    meta = {k: v for k, v in state.items() if k != "groups"}
    meta["groups"] = []
    for gi, group in enumerate(state["groups"]):
        masters = group.get("master")
        meta["groups"].append({"hyper": group["hyper"], "shapes": group["shapes"],
                               "dtypes": group["dtypes"], "state": sorted(group["state"]),
                               "state_dtypes": group.get("state_dtypes"),
                               "master": None if masters is None else
                               [k for k, m in enumerate(masters) if m is not None]})
        for k, p in enumerate(group["params"]):
            arrays[f"g{gi}.params.{k}"] = p
        for k, m in enumerate(masters or []):
            if m is not None:
                arrays[f"g{gi}.master.{k}"] = m
        for state_name, values in group["state"].items():
            for k, v in enumerate(values):
                arrays[f"g{gi}.{state_name}.{k}"] = v
    arrays["__meta__"] = np.array(json.dumps(meta))
    npz.write(path, arrays)


def load(path: str | os.PathLike, opt) -> None:
    """Read a checkpoint written by :func:`save` into ``opt`` (on its own device).

    A corrupt, truncated, mismatched or hostile file (a FIFO, a zip bomb, a
    header that claims a huge shape) raises ``ValueError`` and leaves ``opt`` as
    it was.
    """
    meta, entries = npz.read(path)
    try:
        groups = []
        for gi, group in enumerate(meta["groups"]):
            n = len(group["shapes"])
            groups.append({
                "hyper": group["hyper"], "shapes": group["shapes"], "dtypes": group["dtypes"],
                "params": [entries[f"g{gi}.params.{k}"] for k in range(n)],
                "state": {s: [entries[f"g{gi}.{s}.{k}"] for k in range(n)]
                          for s in group["state"]},
            })
            if group.get("state_dtypes") is not None:
                groups[-1]["state_dtypes"] = group["state_dtypes"]
            if group.get("master") is not None:
                held = set(group["master"])
                groups[-1]["master"] = [entries[f"g{gi}.master.{k}"] if k in held else None
                                        for k in range(n)]
        state = {**{k: v for k, v in meta.items() if k != "groups"}, "groups": groups}
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise ValueError(f"load: {os.fspath(path)} is not a readable fusedopt checkpoint (its "
                         f"metadata does not match its arrays): {type(exc).__name__}: "
                         f"{str(exc)[:200]}") from None
    opt.load_state_dict(state)
