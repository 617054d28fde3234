"""Running the parallel (``prange``) drivers safely under threads and ``fork``.

Numba runs ``parallel=True`` code on a threading layer: TBB, OpenMP or its own
workqueue, whichever is installed (in that order). Two of them break promises
fusedopt makes:

* **GNU OpenMP is not fork-safe.** A process forked after OpenMP has run
  (``multiprocessing``'s default start method on Linux before Python 3.14,
  PyTorch DataLoader workers) aborts as soon as it runs OpenMP code itself.
  A child forked after the parent ran a parallel driver on OpenMP therefore
  runs the serial drivers only: slower, never dead.
* **The workqueue layer is not thread-safe.** Two threads entering parallel
  code at once abort the process. While the layer is workqueue (or not yet
  known), parallel launches take a lock; on TBB and OpenMP they do not.
"""

from __future__ import annotations

import os
import sys
import threading

_lock = threading.Lock()
_layer: str | None = None  # the threading layer, once a parallel driver has run
_serial_only = False  # a child forked after GNU OpenMP ran: parallel code would abort


def _current_layer() -> str | None:
    numba = sys.modules.get("numba")
    if numba is None:
        return None
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel code has run in this process
        return None


def serial_only() -> bool:
    """Whether parallel drivers must not run in this process."""
    return _serial_only


def run_parallel(driver, *args):
    """``driver(*args)`` for a ``parallel=True`` driver, under the lock the layer needs."""
    global _layer
    if _layer is not None and _layer != "workqueue":
        return driver(*args)
    with _lock:
        out = driver(*args)
        if _layer is None:
            _layer = _current_layer()
        return out


def _after_fork_in_child() -> None:
    global _lock, _serial_only, _layer
    _lock = threading.Lock()  # another thread may have held it at the fork
    layer = _layer or _current_layer()
    if layer == "omp":
        _serial_only = True
    _layer = layer


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
