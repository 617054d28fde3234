"""The messages of a step's refusals, built only when one is raised."""

from __future__ import annotations

import math

from fusedopt.optim.groups import bits


def written_names(groups) -> list[str]:
    """The names of the arrays a step writes, in the order the step lists them."""
    names = []
    for gi, group in enumerate(groups):
        where = "" if len(groups) == 1 else f"group {gi} "
        for k in range(len(group.unit_params)):
            names.append(f"{where}parameter {k}")
            state = group.state[k] if group.state is not None else ()
            names.extend(f"{where}{state_name} of parameter {k}"
                         for state_name, _ in zip(group.state_names, state, strict=False))
            if group.master is not None and group.master[k] is not None:
                names.append(f"{where}master copy of parameter {k}")
    return names


def nonfinite(opt, units) -> str:
    """Which tensors hold NaN or inf (``nonfinite='raise'``)."""
    bad = []
    for gi, (group, pairs) in enumerate(zip(opt.groups, units, strict=True)):
        if group.arena is not None:
            grads = [bits(g, s) for g, s in zip(group.arena.grads, group.storage, strict=True)]
            storages = group.storage
        else:
            grads, storages = [g for _, g in pairs], opt._grad_storage[gi]
        for k, (g, storage) in enumerate(zip(grads, storages, strict=True)):
            if not all(math.isfinite(float(x)) for x in opt._impl.norm_sums(g, storage)):
                bad.append(f"group {gi} tensor {k} {tuple(g.shape)}")
    where = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "") if bad else \
        "another rank's gradients"
    return (f"{type(opt).__name__}: non-finite gradient at step {opt.step_count + 1} in "
            f"{where}; nothing was updated (nonfinite='skip' skips such steps instead)")
