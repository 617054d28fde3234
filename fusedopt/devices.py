"""What this process can use: CPU memory (honouring container limits) and GPUs.

Pure reads of ``/proc`` and ``/sys``; CuPy is imported only when asked about GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number


@dataclass(frozen=True)
class MemoryInfo:
    """Bytes this process may still allocate, and where the figure comes from."""

    total_bytes: int
    available_bytes: int
    source: str


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as name -> bytes."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name.strip()] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return out


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            raw = f.read().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None


def _own_cgroups(proc_cgroup: str) -> tuple[str | None, str | None]:
    """This process's (v2 path, v1 memory-controller path) from ``/proc/self/cgroup``."""
    v2 = v1 = None
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _levels(base: str, path: str | None) -> list[str]:
    """``base/path`` and each of its ancestors up to ``base``: limits nest, the tightest
    one anywhere above the process applies."""
    parts = [p for p in (path or "/").split("/") if p and p not in (".", "..")]
    return [os.path.join(base, *parts[:k]) for k in range(len(parts), -1, -1)]


def cgroup_limit(root: str = "/sys/fs/cgroup",
                 proc_cgroup: str = "/proc/self/cgroup") -> tuple[int, int, str] | None:
    """(limit, usage, source): the tightest memory limit on this process's own cgroup and
    its ancestors, cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``.

    The process's cgroup is read from ``/proc/self/cgroup`` (a container's limit is
    often set below the mount root, not on it). None when no finite limit is set.
    """
    v2_path, v1_path = _own_cgroups(proc_cgroup)
    candidates = []
    for base in (root, os.path.join(root, "unified")):  # v2, or v2 beside v1 (hybrid)
        for level in _levels(base, v2_path):
            candidates.append((os.path.join(level, "memory.max"),
                               os.path.join(level, "memory.current"), "cgroup v2"))
    for level in _levels(os.path.join(root, "memory"), v1_path):
        candidates.append((os.path.join(level, "memory.limit_in_bytes"),
                           os.path.join(level, "memory.usage_in_bytes"), "cgroup v1"))
    best = None
    for limit_path, usage_path, source in candidates:
        limit = _read_int(limit_path)  # "max" (v2's no limit) reads as None
        if limit is None or limit >= _UNLIMITED:
            continue
        usage = _read_int(usage_path) or 0
        if best is None or limit - usage < best[0] - best[1]:
            best = (limit, usage, f"{source} ({limit_path})")
    return best


def cpu_memory(meminfo_path: str = "/proc/meminfo", cgroup_root: str = "/sys/fs/cgroup",
               proc_cgroup: str = "/proc/self/cgroup") -> MemoryInfo:
    """CPU memory for this process: the tighter of the machine's and the container's."""
    try:
        with open(meminfo_path) as f:
            info = parse_meminfo(f.read())
        total = info["MemTotal"]
        available = info.get("MemAvailable", info.get("MemFree", 0))
        result = MemoryInfo(total, available, meminfo_path)
    except (OSError, KeyError):
        try:  # where /proc is missing (not Linux), psutil if it is installed
            import psutil
        except ImportError:
            raise RuntimeError(f"cannot read the CPU memory: no {meminfo_path} and no psutil "
                               "(pip install psutil), or pass memory_limit=") from None
        vm = psutil.virtual_memory()
        result = MemoryInfo(vm.total, vm.available, "psutil")
    limit = cgroup_limit(cgroup_root, proc_cgroup)
    if limit is not None:
        cap, usage, source = limit
        if cap - usage < result.available_bytes:
            result = MemoryInfo(min(cap, result.total_bytes), max(cap - usage, 0), source)
    return result


@dataclass(frozen=True)
class GPUInfo:
    """One GPU as CuPy sees it."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: str


def gpus() -> tuple[list[GPUInfo], str]:
    """The GPUs CuPy can use, and a sentence saying why there are none."""
    try:
        import cupy
    except ImportError:
        return [], "CuPy is not installed (pip install 'fusedopt[cuda13]' or [cuda12])"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy without a driver raises CUDARuntimeError
        return [], f"CuPy is installed but no CUDA device is usable ({exc})"
    out = []
    for index in range(count):
        with cupy.cuda.Device(index) as device:
            free, total = device.mem_info
            props = cupy.cuda.runtime.getDeviceProperties(index)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            out.append(GPUInfo(index, name, total, free, device.compute_capability))
    return out, "" if out else "CuPy found no CUDA device"
