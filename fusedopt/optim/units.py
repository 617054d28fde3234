"""A step's checked (parameter, gradient) pairs: every check before any write (a loop
that hands the same gradient arrays again skips what cannot have changed:
:class:`~fusedopt.optim.launches.SeenGrads`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fusedopt import _checks
from fusedopt.optim import launches, messages
from fusedopt.optim.groups import checked_grad


def checked_units(opt, grads) -> list[list[tuple]]:
    """Per group, the (param, grad) pairs to launch over; every check before any write.

    Checked at every step, not only at construction, because the caller owns the
    arrays: each parameter (and state array) must still be writeable, and no gradient
    may share memory with any parameter or state array (not only its own).
    """
    name = type(opt).__name__
    list_groups = [g for g in opt.groups if g.arena is None]
    if grads is None:
        if list_groups:
            raise TypeError(f"{name}.step() needs grads: a sequence matching the "
                            "parameters (only a ParamArena supplies its own)")
        out = [g.arena_grads() for g in opt.groups]
        opt._generation = None
        opt._grad_storage = [list(g.unit_storage) for g in opt.groups]
        check_writeable(opt, name)
        return out
    if not list_groups:
        raise TypeError(f"{name}.step(grads): this optimizer updates ParamArena(s); write "
                        "the gradients into arena.grads and call step() with no arguments")
    if isinstance(grads, (np.ndarray, str)) or not isinstance(grads, Sequence):
        raise TypeError(f"{name}.step: grads must be a sequence of arrays, one per parameter")
    expected = sum(len(g.tensors) for g in list_groups)
    if len(grads) != expected:
        raise ValueError(f"{name}.step: got {len(grads)} gradients for {expected} "
                         "parameters; pass one per parameter, in order")
    if opt._seen.matches(opt.groups, grads):
        opt._generation = opt._seen.generation
        check_writeable(opt, name)
        opt._grad_storage = opt._seen.storages
        return launches.pairs(opt.groups, grads)
    out, k, given, storages = [], 0, [], []
    for group in opt.groups:
        if group.arena is not None:
            out.append(group.arena_grads())
            storages.append(list(group.unit_storage))
            continue
        pairs, group_storages = [], []
        for p, p_bits, p_storage in zip(group.tensors, group.unit_params, group.storage,
                                        strict=True):
            g, g_storage = checked_grad(name, k, grads[k], p, group.kind, p_storage)
            pairs.append((p_bits, g))
            group_storages.append(g_storage)
            given.append(g)
            k += 1
        out.append(pairs)
        storages.append(group_storages)
    check_writeable(opt, name)
    if opt._written is None or not launches.same(opt._written[0], opt.groups):
        arrays = []
        for group in opt.groups:
            for k, p in enumerate(group.unit_params):
                arrays.append(p)
                arrays.extend(group.state[k] if group.state is not None else ())
                if group.master is not None and group.master[k] is not None:
                    arrays.append(group.master[k])
        opt._written = (launches.identity(opt.groups), arrays, _checks.owners(arrays))
    _checks.no_alias(f"{name}.step", opt._written[1],
                     lambda: messages.written_names(opt.groups), given,
                     lambda: [f"grads[{k}]" for k in range(len(given))],
                     owned=opt._written[2])
    opt._grad_storage = storages
    opt._seen.remember(opt.groups, grads, given, storages)
    opt._generation = opt._seen.generation if opt._seen.key is not None else None
    return out

def check_writeable(opt, name: str) -> None:
    for gi, group in enumerate(opt.groups):
        for k, p in enumerate(group.unit_params):
            if opt._xp is np and not p.flags.writeable:
                what = (f"the arena's {p.dtype} buffer" if group.arena is not None
                        else f"group {gi} parameter {k}")
                raise ValueError(f"{name}.step: {what} has become read-only; parameters "
                                 "are updated in place (make it writeable again)")
