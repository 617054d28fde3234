"""What a fusedopt.torch step checks before it writes anything: each parameter and its
gradient, and each parameter's state (the caller's too: a tensor of another size, device,
layout or dtype would send a kernel past its memory)."""

from __future__ import annotations

import torch

from fusedopt.torch.dtypes import STATE_DTYPES, STORAGE


def params(name: str, gi: int, params: list) -> list[str]:
    """Each parameter's storage name; the first bad parameter or gradient raises, naming
    it (the common case does no string work: a step checks every tensor)."""
    storages = []
    for k, p in enumerate(params):
        g = p.grad
        storage = STORAGE.get(p.dtype)
        if (storage is None or g.dtype != p.dtype or g.is_sparse or g.shape != p.shape
                or g.device != p.device or not p.is_contiguous()
                or not g.is_contiguous() or p.device.type not in ("cpu", "cuda")):
            _refuse(name, gi, k, p, g)
        storages.append(storage)
    return storages


def _refuse(name: str, gi: int, k: int, p: torch.Tensor, g: torch.Tensor) -> None:
    where = f"{name}.step: group {gi} parameter {k} {tuple(p.shape)}"
    if g.is_sparse:
        raise RuntimeError(f"{where}: {name} does not support sparse gradients")
    if p.dtype not in STORAGE:
        raise TypeError(f"{where}: dtype {p.dtype} is not supported; use float32, "
                        "float64, bfloat16 or float16")
    if g.dtype != p.dtype:
        raise TypeError(f"{where}: its gradient is {g.dtype}; give it the parameter's "
                        f"dtype {p.dtype}")
    if g.device != p.device or g.shape != p.shape:
        raise ValueError(f"{where}: its gradient is {tuple(g.shape)} on {g.device}; it "
                         f"must match the parameter ({tuple(p.shape)} on {p.device})")
    if p.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{where}: device {p.device} is not supported; use the CPU or "
                         "a CUDA device")
    raise ValueError(f"{where}: the parameter and its gradient must be contiguous "
                     "(the update walks flat memory); make the parameter .contiguous() "
                     "before building the optimizer")


def states(name: str, keys: tuple[str, ...], state_dtype: str | None, params: list,
           states: list, storages: list) -> list[str]:
    """Each parameter's state storage, read from its state tensors, which must fit it.

    The state is the caller's too (``opt.state[p]["exp_avg"] = ...``, a checkpoint of
    other shapes, a changed ``state_dtype``): a tensor of another size, device, layout
    or dtype would send the kernel past its memory, so it is refused, naming it, before
    anything is written. A key the group's settings now need (momentum switched on) is
    made, as zeros.
    """
    out = []
    for k, (p, state, storage) in enumerate(zip(params, states, storages, strict=True)):
        n, device, dtype = p.numel(), p.device, None
        step = state.get("step")
        if not isinstance(step, torch.Tensor):
            state["step"] = torch.tensor(float(step or 0), dtype=torch.float32)
        for key in keys:
            t = state.get(key)
            if t is None:
                t = state[key] = torch.zeros_like(
                    p, dtype=STATE_DTYPES.get(state_dtype, p.dtype),
                    memory_format=torch.contiguous_format)
            if not (isinstance(t, torch.Tensor) and t.device == device and t.numel() == n
                    and t.is_contiguous() and t.dtype in STORAGE
                    and (dtype is None or t.dtype == dtype)):
                _refuse_state(name, k, p, key, t, dtype)
            dtype = t.dtype
        master = state.get("master")
        if master is not None and not (
                isinstance(master, torch.Tensor) and master.dtype == torch.float32
                and master.device == device and master.numel() == n
                and master.is_contiguous()):
            _refuse_state(name, k, p, "master", master)
        out.append(storage if dtype is None else STORAGE[dtype])
    return out


def _refuse_state(name: str, k: int, p: torch.Tensor, key: str, t, other=None) -> None:
    what = (f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor)
            else type(t).__name__)
    if other is not None and isinstance(t, torch.Tensor) and t.dtype != other:
        what += f" while the rest of its state is {other}"
    raise ValueError(f"{name}.step: state[{key!r}] of parameter {k} "
                     f"({p.dtype} {tuple(p.shape)} on {p.device}) is {what}; it must be a "
                     "contiguous tensor of the parameter's size on its device (float32 for "
                     "the master copy, one dtype for all its state); nothing was updated")
