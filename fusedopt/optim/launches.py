"""A step's launches: which tensors share one compiled call, and what of them never changes.

Which tensors of a step go into one launch (consecutive tensors of a group with one
storage signature), each one's parameter, state and master arrays, their addresses and
each tensor's first element's index in the model (stochastic rounding numbers elements
across the model) depend only on the optimizer's allocation and the gradients' storage
dtypes. :func:`layout` builds them once; the optimizer keeps them while its groups hold
the same state objects, so a step over hundreds of tensors does per tensor only what
depends on the gradient: its address.

A parameter's or a state array's address never changes while the optimizer holds it
(NumPy refuses to resize an array that is referenced elsewhere; CuPy arrays never move).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from fusedopt.backends import multi_tensor
from fusedopt.kernels import Rule
from fusedopt.kernels.dtypes import LOW_PRECISION, Signature, homogeneous
from fusedopt.kernels.dtypes import signature as dtype_signature


@dataclass
class Run:
    """Consecutive tensors of one group with one storage signature: one launch.

    ``units`` are the tensors' indices in their group; ``statics[i]`` is unit i's
    arrays without the gradient (parameter, state..., master copy); ``rows[i]`` their
    addresses; ``offsets[i]`` its first element's index in the model.
    """

    group: int
    rule: Rule
    signature: Signature
    key: tuple
    units: list[int] = field(default_factory=list)
    statics: list[tuple] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    #: the rows with the gradients' addresses, for the remembered gradients of this
    #: generation of :class:`SeenGrads`
    grad_rows: tuple = ()
    generation: int = -1


def identity(groups) -> tuple:
    """What a layout depends on, compared by identity: each group, its rule, state and
    master lists (a new allocation or a rule switch makes new lists)."""
    return tuple((g, g.rule, g.state, g.master) for g in groups)


def same(a: tuple, groups) -> bool:
    """Whether an :func:`identity` tuple names ``groups`` as they are now (no allocation:
    this runs every step)."""
    if len(a) != len(groups):
        return False
    for (group, rule, state, master), g in zip(a, groups, strict=True):
        if group is not g or rule is not g.rule or state is not g.state or master is not g.master:
            return False
    return True


def layout(groups, grad_storages: list[list[str]], stochastic: bool,
           firsts: list[int] | None = None) -> list[Run]:
    """The launches of a step over ``groups`` (state allocated), whose gradients are
    stored as ``grad_storages[group][unit]``; ``firsts``: each unit's first element's
    index in the model (default: the units laid end to end)."""
    runs: list[Run] = []
    offset = 0
    unit = 0
    for gi, (group, grad_storage) in enumerate(zip(groups, grad_storages, strict=True)):
        rule = group.rule
        signatures: dict[tuple, Signature] = {}
        for k, (p, state) in enumerate(zip(group.unit_params, group.state, strict=True)):
            master = group.master[k] if group.master is not None else None
            storage = (group.unit_storage[k], grad_storage[k],
                       *(group.state_storage[k],) * len(state))
            key = (storage, master is not None)
            if key not in signatures:
                signatures[key] = (
                    homogeneous(rule.arrays, p.dtype)
                    if master is None and len(set(storage)) == 1
                    and storage[0] not in LOW_PRECISION
                    else dtype_signature(rule.arrays, storage, writes=rule.writes,
                                         master=master is not None, stochastic=stochastic))
            if not runs or runs[-1].group != gi or runs[-1].key != key:
                runs.append(Run(gi, rule, signatures[key], key))
            run = runs[-1]
            statics = (p, *state) + ((master,) if master is not None else ())
            run.units.append(k)
            run.statics.append(statics)
            run.rows.append(tuple(multi_tensor.address(a) for a in statics))
            run.sizes.append(p.size)
            run.offsets.append(offset if firsts is None else firsts[unit])
            offset += p.size
            unit += 1
    for run in runs:
        run.sizes = tuple(run.sizes)
        run.offsets = tuple(run.offsets)
    return runs


def launch(impl, run: Run, pairs: list[tuple], prepared: tuple, device_id: int | None,
           generation: int | None = None) -> None:
    """Launch ``run`` with this step's gradients (``pairs[unit] = (param, grad)``) and
    scalars: one compiled call over the list where the backend has one. ``generation``
    is :attr:`SeenGrads.generation` when the gradients are the remembered ones (their
    addresses are then those of the run's last launch of that generation)."""
    rows_launch = getattr(impl, "launch_rows", None)
    if rows_launch is not None and len(run.units) > 1:
        extra = {} if device_id is None else {"device_id": device_id}
        rows_launch(run.rule, grad_rows(run, pairs, generation), run.sizes, prepared,
                    run.offsets, **extra)
        return
    for k, statics, offset in zip(run.units, run.statics, run.offsets, strict=True):
        impl.launch(run.rule, (statics[0], pairs[k][1], *statics[1:]), prepared, offset)


def grad_rows(run: Run, pairs: list[tuple], generation: int | None = None) -> tuple:
    """The run's rows of addresses with this step's gradients' (``pairs[unit] = (param,
    grad)``), kept for the remembered gradients of ``generation``."""
    if generation is not None and run.generation == generation:
        return run.grad_rows
    address = multi_tensor.address
    rows = tuple((row[0], address(pairs[k][1]), *row[1:])
                 for k, row in zip(run.units, run.rows, strict=True))
    run.grad_rows, run.generation = rows, -1 if generation is None else generation
    return rows


def norm_totals(impl, units: list, storages: list) -> list:
    """The three accumulators of :func:`~fusedopt.backends.base.norm_from_sums` over every
    gradient of the step (``units[group] = [(param, grad), ...]``, ``storages[group]``
    their storage names): one launch per storage where the backend reads many arrays at
    once (the GPU's multi-tensor norm), else one reduction per array. Floats on the CPU;
    on a GPU 0-d device arrays (or floats known to be 0), nothing waiting for the device."""
    grads = [g for pairs in units for _, g in pairs]
    names = [s for group in storages for s in group]
    many = getattr(impl, "norm_sums_many", None)
    if many is not None and (len(grads) > 1 or "float64" in names):  # (float64: one read,
        return list(many(grads, names))                               # not three)
    sums = [impl.norm_sums(g, storage) for g, storage in zip(grads, names, strict=True)]
    return [sum(s[k] for s in sums) for k in range(3)]


class SeenGrads:
    """The gradients of the last fully checked step, by weak reference.

    A loop that writes its gradients into the same arrays every step (``out=`` buffers)
    hands the very same objects again: an array's memory, size and byte length never
    change while it lives, so the checks that passed (shape, dtype, contiguity, no
    memory shared with any parameter or state) still hold, and only the parameters'
    writeability, the caller's to change, is read again. Held weakly: an optimizer
    keeps no gradient alive. Only gradients used as given are remembered (not a
    DLPack tensor viewed as an array, whose ``.data`` may be swapped under the view).
    """

    def __init__(self) -> None:
        self.generation = 0  # advances with each set remembered
        self.key: tuple | None = None
        self.refs: list = []
        self.storages: list | None = None

    def matches(self, groups, grads) -> bool:
        """Whether ``grads`` are the remembered gradients, for the same allocation."""
        return (self.key is not None and len(grads) == len(self.refs) and same(self.key, groups)
                and all(ref() is g for ref, g in zip(self.refs, grads, strict=True)))

    def remember(self, groups, grads, used: list, storages: list) -> None:
        """Remember ``grads`` if each was used as given (``used[k] is grads[k]``)."""
        self.key = None
        if len(used) == len(grads) and all(u is g for u, g in zip(used, grads, strict=True)):
            try:
                self.refs = [weakref.ref(g) for g in grads]
            except TypeError:
                return
            self.key, self.storages = identity(groups), storages
            self.generation += 1


def pairs(groups, grads) -> list[list[tuple]]:
    """Per group, its ``(parameter, gradient)`` pairs (an arena's own buffers), for
    remembered gradients."""
    out, k = [], 0
    for group in groups:
        if group.arena is not None:
            out.append(group.arena_grads())
            continue
        n = len(group.unit_params)
        out.append(list(zip(group.unit_params, grads[k:k + n], strict=True)))
        k += n
    return out
