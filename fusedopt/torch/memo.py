"""The step memo of fusedopt.torch: what the last checked step of a param group saw, and
the quick look that tells the next step is the same.

A training loop hands its optimizer the same parameters and state every step, and often
the same gradient tensors. The full checks (:mod:`fusedopt.torch.checks`) read a dozen
attributes of every tensor. Each read is a call from Python into torch and, after an
update has streamed the whole model through the caches, a few cache misses: reading all
of them again cost about 1.1 ms per step for 157 tensors on a 2-core CPU, next to a
7.5 ms update. The memo keeps the tensors (weakly, so that nothing it saw is kept
alive) and asks again only what can change while they stay the same objects, each
question in one C loop (``map``) over the group:

==============  =========================================================================
parameters      the same objects in the group, each with the same address, size, dtype
                and contiguity (what ``resize_``, ``set_``, ``transpose_`` or
                ``p.data = ...`` would change)
gradients       the same objects at the same addresses; new ones (``zero_grad`` to None,
                then backward) or new memory under old ones are checked against their
                parameters, all at once
state           the same dicts with the same number of keys; the same tensors at the
                same addresses and versions (fusedopt's kernels write them through their
                addresses, so only someone else's in-place change bumps a version)
step counts     the same tensors, read with one ``tolist()`` where they are views of one
                tensor (:mod:`fusedopt.torch.steps`), advanced alike since the memo
==============  =========================================================================

A changed answer sends the step through the full checks, which name what is wrong.
What the memo does not see: a state tensor whose ``.data`` is set to a view of its own
memory (same address, same version). Its bytes stay inside memory it holds, so nothing
is written outside that tensor.
"""

from __future__ import annotations

import weakref
from itertools import compress
from operator import is_, is_not, itemgetter, methodcaller
from typing import Any

import torch

_T = torch.Tensor
GRAD = _T.grad.__get__
_ADDRESS = _T.data_ptr
_NUMEL = _T.numel
_DTYPE = _T.dtype.__get__
_CONTIGUOUS = _T.is_contiguous
_VERSION = _T._version.__get__
_SHAPE = _T.shape.__get__
_DEVICE = _T.device.__get__
_LAYOUT = _T.layout.__get__
_DEREF = weakref.ref.__call__
_MASTER = methodcaller("get", "master")


def _same(now: list, then: list) -> bool:
    """The same objects in the same order (a tensor's ``==`` compares values)."""
    return len(now) == len(then) and all(map(is_, now, then))


def _alive(now: list, refs: list) -> bool:
    """``now`` are the objects ``refs`` were made of (a None ref: a None)."""
    if len(now) != len(refs):
        return False
    if None in refs:  # master copies, where some parameters have none
        return all(t is None if r is None else r() is t for t, r in zip(now, refs,
                                                                        strict=True))
    return all(map(is_, now, map(_DEREF, refs)))


class Memo:
    """What a checked step of one param group saw (see the module docstring)."""

    __slots__ = ("addresses", "base", "buckets", "counts", "grad_addresses", "grad_meta",
                 "grad_refs", "group_params", "has_master", "keys", "lengths", "mask",
                 "param_meta", "params", "positions", "states", "tensor_refs", "versions")

    def recall(self, group_params: list, grads: list, state: dict, keys: tuple,
               counted: bool) -> dict | None:
        """The buckets of ``FusedOptimizer._grouped`` for this step, or None where
        anything the checks read may have changed. ``grads`` are ``group_params``'
        gradients (None where a parameter has none); ``keys``: the state the group's rule
        now keeps; ``counted``: the step counts are read (not a capturable group's)."""
        if self.keys[1:] != keys or not _same(group_params, self.group_params):
            return None
        if list(map(is_not, grads, [None] * len(grads))) != self.mask:
            return None
        params = self.params
        if len(params) != len(grads):
            grads = list(compress(grads, self.mask))
        grad_addresses = list(map(_ADDRESS, grads))
        if grad_addresses != self.grad_addresses or not _alive(grads, self.grad_refs):
            # new gradient tensors, or new memory under old ones: checked, all at once
            if not (list(map(_DTYPE, grads)) == self.grad_meta[0]
                    and list(map(_SHAPE, grads)) == self.grad_meta[1]
                    and list(map(_DEVICE, grads)) == self.grad_meta[2]
                    and list(map(_LAYOUT, grads)) == self.grad_meta[3]
                    and all(map(_CONTIGUOUS, grads))):
                return None
        states = list(map(state.get, params))
        if not (_same(states, self.states) and list(map(len, states)) == self.lengths):
            return None
        try:
            columns = _columns(states, self.keys, self.has_master)
        except KeyError:
            return None
        if not all(map(_alive, columns, self.tensor_refs)):
            return None
        if not (_addresses_of(params, columns, self.has_master) == self.addresses
                and _versions(columns, self.has_master) == self.versions
                and [list(map(f, params)) for f in _PARAM_META] == self.param_meta):
            return None
        shift = 0
        if counted:
            counts = self._counts(columns[0])
            shift = counts[0] - self.counts[0]
            if shift < 0 or [c - shift for c in counts] != self.counts:
                return None
        return self._buckets(int(shift), grad_addresses)

    def _counts(self, steps: list) -> list[float]:
        if self.base is not None:
            values = self.base.tolist()
            return values if self.positions is None else [values[k] for k in self.positions]
        return [float(s) for s in steps]

    def _buckets(self, shift: int, grad_addresses: list) -> dict:
        """The recorded buckets, their step moved by ``shift``; their launch rows remade
        where the gradients moved."""
        moved = grad_addresses != self.grad_addresses
        if moved:
            param_at, *state_at, master_at = self.addresses
            state_rows = list(zip(*state_at, strict=True)) if state_at else \
                [()] * len(param_at)
        out = {}
        for key, (members, member_states, (rows, sizes), counts, which) in \
                self.buckets.items():
            if moved:
                rows = tuple((param_at[k], grad_addresses[k], *state_rows[k],
                              *((master_at[k],) if key[3] else ())) for k in which)
            out[(*key[:-1], key[-1] + shift)] = (members, member_states, (rows, sizes),
                                                 counts)
        return out


_PARAM_META = (_NUMEL, _DTYPE, _CONTIGUOUS)


def _columns(states: list, keys: tuple, has_master: bool) -> list[list]:
    """Per key (``"step"``, then the rule's state), its tensors in ``states``' order; the
    master copies (None where a parameter has none) last when there are any."""
    columns = [list(map(itemgetter(key), states)) for key in keys]
    columns.append(list(map(_MASTER, states)) if has_master else [])
    return columns


def _addresses_of(params: list, columns: list, has_master: bool) -> list:
    """``[params, *state, masters]``'s addresses (masters: None where none). Not the step
    counts': no kernel writes them through an address (torch ops advance them)."""
    return [list(map(_ADDRESS, params)), *(list(map(_ADDRESS, c)) for c in columns[1:-1]),
            [None if t is None else t.data_ptr() for t in columns[-1]] if has_master else []]


def _versions(columns: list, has_master: bool) -> list:
    """The version counters of the state, which only fusedopt's kernels write (through
    its addresses, bumping nothing). Not the parameters' (a user's in-place change of
    their values is no concern of the checks; of their layout, the metadata shows) nor
    the step counts' (every advance bumps them)."""
    written = columns[1:-1]
    if has_master:
        written.append([t for t in columns[-1] if t is not None])
    return [list(map(_VERSION, c)) for c in written]


def record(group_params: list, grads: list, params: list, states: list, keys: tuple,
           grouped: dict, counts: list | None) -> Memo:
    """A :class:`Memo` of a step whose tensors the full checks passed. ``grouped``:
    ``{key: (members, their states, (rows, sizes), None)}``; ``counts``: the step
    counts of ``params`` (None for a capturable group)."""
    memo = Memo()
    memo.group_params = list(group_params)
    memo.mask = list(map(is_not, grads, [None] * len(grads)))
    live = list(compress(grads, memo.mask))
    memo.params, memo.states = list(params), list(states)
    memo.grad_refs = list(map(weakref.ref, live))
    memo.grad_meta = [list(map(f, params)) for f in (_DTYPE, _SHAPE, _DEVICE, _LAYOUT)]
    memo.grad_addresses = list(map(_ADDRESS, live))
    memo.lengths = list(map(len, states))
    memo.keys = ("step", *keys)
    memo.has_master = any(m is not None for m in map(_MASTER, states))
    columns = _columns(states, memo.keys, memo.has_master)
    memo.tensor_refs = [[None if t is None else weakref.ref(t) for t in c] for c in columns]
    memo.addresses = _addresses_of(params, columns, memo.has_master)
    memo.versions = _versions(columns, memo.has_master)
    memo.param_meta = [list(map(f, params)) for f in _PARAM_META]
    memo.base, memo.positions, memo.counts = _base_of(columns[0]), None, counts
    if memo.base is not None:
        offsets = [s.storage_offset() - memo.base.storage_offset() for s in columns[0]]
        memo.positions = None if offsets == list(range(len(offsets))) else offsets
    index = {id(p): k for k, p in enumerate(params)}
    memo.buckets = {}
    for key, (members, member_states, addresses, _) in grouped.items():
        which = [index[id(p)] for p in members]
        whole = (memo.base is not None and memo.positions is None
                 and which == list(range(memo.base.numel())))
        memo.buckets[key] = (members, member_states, addresses,
                             memo.base if whole else None, which)
    return memo


def _base_of(steps: list) -> Any:
    """The one 1-d tensor every step count is a view of, or None."""
    base = steps[0]._base if steps else None
    if base is None or base.dim() != 1 or any(s._base is not base for s in steps):
        return None
    return base
