"""How much memory a step allocates, in each array library's own accounting.

One context manager per kind of array: entered, it starts counting from zero;
``current()`` is what is allocated now, net of what was freed since entry, and
``peak(run)`` calls ``run`` and returns the most allocated while it ran. Used by
:func:`fusedopt.train.measured_plan.measure_batch_size`.

=====================  ===========================================================
arrays                 memory accounting
=====================  ===========================================================
NumPy                  ``tracemalloc`` (NumPy reports its array memory to it)
CuPy                   a ``cupy.cuda.MemoryHook``: the pool's allocations and frees
torch, CUDA            ``torch.cuda.memory_allocated``/``max_memory_allocated``
torch, CPU             the profiler's memory events (``profile_memory=True``) in
                       time order; per operator, so a scratch buffer an operator
                       allocates and frees inside itself is not seen
=====================  ===========================================================
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from fusedopt import devices


class _Tracemalloc:
    name = "tracemalloc"

    def __enter__(self):
        import tracemalloc

        self._tm = tracemalloc
        self._started = not tracemalloc.is_tracing()
        if self._started:
            tracemalloc.start()
        self._base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc):
        if self._started:
            self._tm.stop()

    def current(self) -> int:
        return self._tm.get_traced_memory()[0] - self._base

    def peak(self, run: Callable[[], None]) -> int:
        self._tm.reset_peak()
        run()
        return self._tm.get_traced_memory()[1] - self._base


class _CupyPool:
    name = "a CuPy memory hook (the pool's allocations and frees)"

    def __enter__(self):
        import cupy

        class Count(cupy.cuda.MemoryHook):
            name = "fusedopt_measure_batch_size"

            def __init__(self):
                self.now = self.high = 0

            def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
                self.now += mem_size
                self.high = max(self.high, self.now)

            def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
                self.now -= mem_size

        self._cupy = cupy
        self._hook = Count()
        self._hook.__enter__()
        return self

    def __exit__(self, *exc):
        self._hook.__exit__(*exc)

    def current(self) -> int:
        return self._hook.now

    def peak(self, run: Callable[[], None]) -> int:
        self._hook.high = self._hook.now
        run()
        self._cupy.cuda.get_current_stream().synchronize()
        return self._hook.high


class _TorchCuda:
    name = "torch.cuda.max_memory_allocated"

    def __enter__(self):
        import torch

        self._cuda = torch.cuda
        self._cuda.synchronize()
        self._base = self._cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        pass

    def current(self) -> int:
        return self._cuda.memory_allocated() - self._base

    def peak(self, run: Callable[[], None]) -> int:
        self._cuda.synchronize()
        self._cuda.reset_peak_memory_stats()
        run()
        self._cuda.synchronize()
        return self._cuda.max_memory_allocated() - self._base


class _TorchCpuProfiler:
    name = "the torch profiler's memory events (per operator)"

    def __enter__(self):
        self._now = 0
        return self

    def __exit__(self, *exc):
        pass

    def current(self) -> int:
        return self._now

    def peak(self, run: Callable[[], None]) -> int:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run()
        # An operator's own (self) memory is its allocations less its frees, and
        # "[memory]" events are those made outside any operator. Inside an operator the
        # order is not recorded: a net allocation is counted from its start, a net free
        # from its end (an upper bound; an autograd node frees its inputs only after the
        # kernels it runs have allocated their outputs).
        changes = []
        for e in prof.events():
            used = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
            if used:
                changes.append((e.time_range.start if used > 0 else e.time_range.end, -used))
        high = now = self._now
        for _, minus_used in sorted(changes):  # at one instant, allocations first
            now -= minus_used
            high = max(high, now)
        self._now = now
        return high


ACCOUNTING = {"numpy": _Tracemalloc, "cupy": _CupyPool, "torch-cuda": _TorchCuda,
               "torch-cpu": _TorchCpuProfiler}


def free_bytes(kind: str) -> int:
    if kind in ("numpy", "torch-cpu"):
        return devices.cpu_memory().available_bytes
    if kind == "cupy":
        from fusedopt.train.planner import available_memory

        return available_memory("gpu")
    import torch

    free, _ = torch.cuda.mem_get_info()
    return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())


def oom_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [MemoryError]
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        errors.append(cupy.cuda.memory.OutOfMemoryError)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch.cuda, "OutOfMemoryError"):
        errors.append(torch.cuda.OutOfMemoryError)
    return tuple(errors)
