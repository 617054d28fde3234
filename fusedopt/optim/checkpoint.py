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

import numpy as np

from fusedopt import _checks
from fusedopt.optim import npz
from fusedopt.optim.groups import on_device, to_host

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
                     "dtypes": [t.dtype.name for t in group.tensors],
                     "params": [to_host(t) for t in group.tensors], "state": {}}
            if group.state is not None:
                for k, state_name in enumerate(group.state_names):
                    entry["state"][state_name] = [to_host(v) for v in group.state_views(k)]
            groups.append(entry)
        return {"format": FORMAT, "version": VERSION, "optimizer": type(self).__name__,
                "step": self.step_count, "epoch": self.epoch,
                "skipped_steps": self.skipped_steps, "groups": groups}

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
        groups = state.get("groups")
        if not isinstance(groups, list) or len(groups) != len(self.groups):
            raise ValueError(f"{name}.load_state_dict: the state has "
                             f"{len(groups) if isinstance(groups, list) else 'no'} group(s), "
                             f"this optimizer {len(self.groups)}")
        staged = [self._staged_group(f"{name}.load_state_dict: group {gi}", group, entry)
                  for gi, (group, entry) in enumerate(zip(self.groups, groups, strict=True))]
        if any(s is not None for *_, s in staged) and any(s is None for *_, s in staged):
            raise ValueError(f"{name}.load_state_dict: some groups have state and some not")
        # Everything checked and on the device: now write.
        for group, hyper, rule, params, state_arrays in staged:
            group.hyper = hyper
            if rule is not group.rule:  # e.g. amsgrad switched: other state names
                group.rule, group.state = rule, None
            for dst, src in zip(group.tensors, params, strict=True):
                dst[...] = src
            if state_arrays is None:
                group.state = None
                continue
            if group.state is None:
                group.allocate(self._xp)
            for k, state_name in enumerate(group.state_names):
                for dst, src in zip(group.state_views(k), state_arrays[state_name], strict=True):
                    dst[...] = src
        self.step_count = counters["step"]
        self.epoch = counters["epoch"]
        self.skipped_steps = counters["skipped_steps"]

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
        params = self._staged_arrays(where, "params", entry.get("params"), group.tensors)
        saved_state = entry.get("state") or {}
        if saved_state and set(saved_state) != set(rule.state):
            raise ValueError(f"{where}: state {sorted(saved_state)} is not {sorted(rule.state)}")
        state_arrays = ({k: self._staged_arrays(where, k, saved_state[k], group.tensors)
                         for k in rule.state} if saved_state else None)
        for k in rule.nonnegative if state_arrays else ():
            for i, a in enumerate(state_arrays[k]):
                if a.size and bool((a < 0).any()):  # a sum of squares: the next step gives NaN
                    raise ValueError(f"{where}: {k}[{i}] has negative values; it is an average "
                                     "of squares, never negative (a damaged or edited state)")
        return group, hyper, rule, params, state_arrays

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
        state = {**{k: v for k, v in meta.items() if k != "groups"}, "groups": groups}
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise ValueError(f"load: {os.fspath(path)} is not a readable fusedopt checkpoint (its "
                         f"metadata does not match its arrays): {type(exc).__name__}: "
                         f"{str(exc)[:200]}") from None
    opt.load_state_dict(state)
