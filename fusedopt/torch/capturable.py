"""The capturable step (``capturable=True``): nothing of it is read on the host.

A step whose host code reads a value from the device (a step count, a learning rate, a
GradScaler's ``found_inf``) waits for the device, and cannot be captured in a CUDA graph.
Like torch's capturable optimizers, these keep ``state["step"]`` on the parameter's
device, and a bucket's step is:

1. the checks and the grouping, which read tensor metadata only (dtype, shape, device,
   address), never a value;
2. the rule's scalars computed on the device, one row per tensor, by the rule's own
   ``host_scalars`` (:class:`~fusedopt.kernels.registry.Rule`'s ``device_scalars``) on
   device tensors: its step count plus one, the learning rate (a tensor ``lr`` stays
   one), and the inverse of GradScaler's scale, in float64 as on the host; the constant
   part of the rows is uploaded once per set of hyperparameters;
3. one launch of the capturable multi-tensor kernel (CUDA) or its CPU twin, which reads
   those rows and returns before any write while ``found_inf`` is set;
4. the step counts advance by ``1 - found_inf``, on the device.

A CUDA graph captures steps 2 to 4 after a warm-up step (which uploads the tables).
Python floats in the param groups are baked into the capture, as in torch: a schedule
that changes the learning rate while a graph replays gives it as a tensor.
"""

from __future__ import annotations

from typing import Any

import torch

from fusedopt.backends import numba_cpu
from fusedopt.backends.base import ScalarRangeError, check_scalars
from fusedopt.kernels.registry import Rule
from fusedopt.optim.device_step import kept

_zeros: dict[torch.device, torch.Tensor] = {}  # a found_inf of 0 per device


def refuse(name: str, rule: Rule) -> None:
    """A ``ValueError`` where ``rule`` cannot compute its scalars on the device."""
    if not rule.device_scalars:
        raise ValueError(f"{name}: capturable=True is not supported with the rule "
                         f"{rule.name!r}: its step scalars are computed on the host; leave "
                         "capturable=False")


def no_inf(device: torch.device) -> torch.Tensor:
    """A float32 zero on ``device``: the skip flag of a step without GradScaler."""
    found = _zeros.get(device)
    if found is None:
        found = _zeros[device] = torch.zeros(1, dtype=torch.float32, device=device)
    return found


def scalar_rows(name: str, rule: Rule, hyper: dict, signature, counts: torch.Tensor,
                lr: Any, grad_scale: Any) -> torch.Tensor:
    """``(len(counts), len(rule.scalars))`` rows in the compute dtype, on ``counts``'
    device: row ``t`` is ``rule.host_scalars`` for tensor ``t``, whose step count is
    ``counts[t]`` before this step. ``lr`` and ``grad_scale`` are floats or 0-d tensors."""
    device = counts.device
    arguments = dict(hyper, lr=lr, grad_scale=grad_scale)
    if rule.needs_step:
        arguments["step"] = counts.to(torch.float64) + 1.0
    values = rule.host_scalars(**arguments)
    try:
        check_scalars(rule, arguments, values, signature)
    except ScalarRangeError as exc:
        raise ValueError(f"{name}: {exc}") from None
    fixed = tuple(0.0 if isinstance(v, torch.Tensor) else float(v) for v in values)
    constants = kept(("torch", fixed, device),
                     lambda: torch.tensor(fixed, dtype=torch.float64, device=device))
    n = counts.numel()
    columns = [v.to(device=device, dtype=torch.float64).expand(n)
               if isinstance(v, torch.Tensor) else constants[k].expand(n)
               for k, v in enumerate(values)]
    compute = torch.float64 if signature.compute.itemsize == 8 else torch.float32
    return torch.stack(columns, dim=1).to(compute)


def counts_of(step_tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(counts, base)``: the step counts as one 1-d tensor, in order, and the one tensor
    they are all views of, in that order (advanced with one op), or None."""
    base = step_tensors[0]._base
    if (base is not None and base.dim() == 1 and base.numel() == len(step_tensors)
            and all(s._base is base and s.storage_offset() - base.storage_offset() == k
                    for k, s in enumerate(step_tensors))):
        return base, base
    return torch.stack(step_tensors), None


def advance(step_tensors: list[torch.Tensor], base: torch.Tensor | None,
            found_inf: torch.Tensor | None) -> None:
    """Each step count plus ``1 - found_inf``: unchanged by a skipped step, with no sync."""
    if found_inf is None:
        if base is not None:
            base.add_(1.0)
        else:
            torch._foreach_add_(step_tensors, 1.0)
        return
    keep = 1.0 - found_inf.to(torch.float32).reshape(())
    if base is not None:
        base.add_(keep)
    else:
        torch._foreach_add_(step_tensors, keep)


def then(first, second):
    """A run of ``first()`` then ``second()``."""
    def both():
        first()
        second()
    return both


def plan(name: str, rule: Rule, hyper: dict, device: torch.device, signature,
         states: list[dict], addresses: tuple, lr: Any, grad_scale: Any,
         found_inf: torch.Tensor | None):
    """A bucket's capturable step, its scalars computed on the device now (before any
    write of the step), its launch and the counts' advance left to the returned
    ``run()``: the capturable kernel on ``device``'s current stream, or the CPU driver,
    reading the rows and the skip flag where they lie."""
    step_tensors = [s["step"] for s in states]
    counts, base = counts_of(step_tensors)
    rows = scalar_rows(name, rule, hyper, signature, counts, lr, grad_scale)
    skip = (no_inf(device) if found_inf is None
            else found_inf.to(device=device, dtype=torch.float32).reshape(1))
    table, sizes = addresses
    if device.type == "cpu":
        rows_view, skip_view = rows.numpy(), skip.numpy()

        def run():
            numba_cpu.launch_capturable(rule, table, sizes, signature, rows_view, skip_view)
            advance(step_tensors, base, found_inf)
        return run
    from fusedopt.backends import cupy_cuda

    def run_cuda():
        import cupy

        stream = torch.cuda.current_stream(device)
        with cupy.cuda.ExternalStream(stream.cuda_stream, device.index or 0):
            cupy_cuda.launch_capturable(rule, table, sizes, signature, rows.data_ptr(),
                                        skip.data_ptr(), device.index or 0)
        advance(step_tensors, base, found_inf)
    return run_cuda
