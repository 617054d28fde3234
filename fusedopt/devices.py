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


def cgroup_limit(root: str = "/sys/fs/cgroup") -> tuple[int, int, str] | None:
    """(limit, usage, source) from cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``.

    None when no finite limit is set.
    """
    candidates = [
        (os.path.join(root, "memory.max"), os.path.join(root, "memory.current"), "cgroup v2"),
        (os.path.join(root, "memory", "memory.limit_in_bytes"),
         os.path.join(root, "memory", "memory.usage_in_bytes"), "cgroup v1"),
    ]
    for limit_path, usage_path, source in candidates:
        try:
            with open(limit_path) as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw == "max" or not raw.isdigit() or int(raw) >= _UNLIMITED:
            return None
        try:
            with open(usage_path) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            usage = 0
        return int(raw), usage, f"{source} ({limit_path})"
    return None


def cpu_memory(meminfo_path: str = "/proc/meminfo",
               cgroup_root: str = "/sys/fs/cgroup") -> MemoryInfo:
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
    limit = cgroup_limit(cgroup_root)
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
