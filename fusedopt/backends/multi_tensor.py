"""Lists of tensors in one launch: the table of addresses, its chunks, and its checks.

A multi-tensor driver (Numba on the CPU) takes one row per tensor: its address in
each array (parameter, gradient, state, master copy), then its first element's index
in the model (stochastic rounding numbers elements across tensors); and chunks
``(tensor, start, stop)`` that cut large tensors so that threads share the work. The
rows, the chunks and the check that no written memory meets any other array are
built once per set of addresses and kept (``config.MULTI_TENSOR_TABLES`` sets): a
training loop hands the same tensors every step.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict

import numpy as np

from fusedopt import config

_lock = threading.Lock()
_tables: OrderedDict = OrderedDict()


_addresses: dict[int, tuple] = {}


def address(array) -> int:
    """The address of a NumPy array's (or a CuPy array's) first element, remembered while
    the array lives (``ndarray.ctypes.data`` costs 2 us; a list of 157 tensors with their
    state reads 628 addresses a step). An array's address never changes: NumPy refuses to
    resize an array that has weak references."""
    key = id(array)
    found = _addresses.get(key)
    if found is not None and found[0]() is array:
        return found[1]
    ctypes = getattr(array, "ctypes", None)
    value = ctypes.data if ctypes is not None else array.data.ptr
    try:
        ref = weakref.ref(array, lambda dead, key=key: _forget(key, dead))
    except TypeError:  # no weak references: nothing remembered
        return value
    _addresses[key] = (ref, value)
    return value


def _forget(key: int, dead) -> None:
    found = _addresses.get(key)
    if found is not None and found[0] is dead:
        _addresses.pop(key, None)


def columns(rule, signature) -> tuple[tuple, tuple, tuple]:
    """A table's columns for ``rule`` and its storage ``signature``: the arrays' names (the
    master copy last), whether each is written, and each one's item size."""
    names = (*rule.arrays, *(("master",) if signature.master else ()))
    written = tuple(a in rule.writes for a in rule.arrays) + ((True,) if signature.master
                                                                else ())
    sizes = tuple(2 if s in ("bfloat16", "float16") else np.dtype(s).itemsize
                  for s in signature.storage) + ((4,) if signature.master else ())
    return names, written, sizes


def tables(fname: str, names: tuple[str, ...], written: tuple[bool, ...], arrays_list,
           offsets, itemsizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """``(table, chunks, total elements)`` for ``arrays_list`` (one tuple of arrays per
    tensor, every array of a tuple of one size): :func:`tables_of` their addresses."""
    rows = tuple(tuple(address(a) for a in arrays) for arrays in arrays_list)
    sizes = tuple(arrays[0].size for arrays in arrays_list)
    return tables_of(fname, names, written, rows, sizes, offsets, itemsizes)


def tables_of(fname: str, names: tuple[str, ...], written: tuple[bool, ...], rows: tuple,
              sizes: tuple, offsets, itemsizes: tuple[int, ...], threads: int = 1
              ) -> tuple[np.ndarray, np.ndarray, int]:
    """``(table, chunks, total elements)`` for ``rows`` (one tuple of addresses per tensor,
    in the order of ``names``) of ``sizes`` elements, memoised on the addresses.

    Raises ``ValueError`` naming the two arrays if a written array shares memory with any
    other array of the call (gradients may share memory with each other: they are only
    read).
    """
    key = (names, itemsizes, rows, sizes, tuple(offsets), threads)
    with _lock:
        found = _tables.get(key)
        if found is not None:
            _tables.move_to_end(key)
            return found
    table = np.zeros((len(rows), len(names) + 1), dtype=np.int64)
    if rows:
        table[:, : len(names)] = rows
        table[:, len(names)] = offsets
    _check(fname, names, written, table, np.asarray(sizes, dtype=np.int64), itemsizes)
    chunks = _chunks_of(tuple(sizes), threads, config.MULTI_TENSOR_CHUNK)
    found = (table, chunks, int(sum(sizes)))
    with _lock:
        _tables[key] = found
        while len(_tables) > config.MULTI_TENSOR_TABLES:
            _tables.popitem(last=False)
    return found


@functools.lru_cache(maxsize=64)
def _chunks_of(sizes: tuple, threads: int, step: int) -> np.ndarray:
    """:func:`_chunks`, kept per model shape (new gradient addresses each step need a new
    table, not new chunks). Shared: nothing writes it (left writeable, as a read-only
    array would be a second compiled type for every driver)."""
    return _chunks(sizes, threads)


def _chunks(sizes, threads: int = 1) -> np.ndarray:
    """The pieces ``(tensor, start, stop)`` of at most ``config.MULTI_TENSOR_CHUNK`` elements.

    For ``threads`` > 1 the model's elements, in order, are cut into that many runs of
    equal length, and each run into pieces laid out one run after the other, each run
    padded with empty pieces to the same count: a parallel loop that splits its
    iterations into equal contiguous blocks (Numba's static schedule) then gives every
    thread the same number of elements, as one contiguous stretch of each tensor after
    another (as it would walk an arena), so the hardware prefetchers keep streaming.
    """
    step = config.MULTI_TENSOR_CHUNK
    total = int(sum(sizes))
    if threads <= 1 or total <= step:
        pieces = [(t, lo, min(lo + step, n)) for t, n in enumerate(sizes)
                  for lo in range(0, n, step)]
        return np.array(pieces, dtype=np.int64).reshape(-1, 3)
    bins: list[list] = [[] for _ in range(threads)]
    bounds = [total * (k + 1) // threads for k in range(threads)]  # each run's end
    k, first = 0, 0  # the current run, and the model index of tensor t's first element
    for t, n in enumerate(sizes):
        lo = 0
        while lo < n:
            while first + lo >= bounds[k]:
                k += 1
            hi = min(n, lo + step, bounds[k] - first)
            bins[k].append((t, lo, hi))
            lo = hi
        first += n
    width = max(len(b) for b in bins)
    pieces = [piece for b in bins for piece in b + [(0, 0, 0)] * (width - len(b))]
    return np.array(pieces, dtype=np.int64).reshape(-1, 3)


def _check(fname, names, written, table, sizes, itemsizes) -> None:
    n = len(sizes)
    keep = sizes > 0
    starts = table[:, : len(names)]
    ends = starts + sizes[:, None] * np.asarray(itemsizes, dtype=np.int64)[None, :]
    tensor = np.repeat(np.arange(n), len(names)).reshape(n, len(names))
    column = np.tile(np.arange(len(names)), (n, 1))
    mask = np.asarray(written, bool)[None, :] & keep[:, None]
    w_start, w_end = starts[mask], ends[mask]
    w_tensor, w_column = tensor[mask], column[mask]
    order = np.argsort(w_start, kind="stable")
    w_start, w_end, w_tensor, w_column = (x[order] for x in (w_start, w_end, w_tensor,
                                                              w_column))

    def name(t, c) -> str:
        return f"tensor {int(t)}'s {names[int(c)]}"

    clash = np.nonzero(w_end[:-1] > w_start[1:])[0]
    if clash.size:
        i = clash[0]
        raise ValueError(f"{fname}: {name(w_tensor[i], w_column[i])} and "
                         f"{name(w_tensor[i + 1], w_column[i + 1])} share memory; each tensor "
                         "needs its own memory (the same tensor passed twice?)")
    read = ~np.asarray(written, bool)[None, :] & keep[:, None]
    r_start, r_end, r_tensor, r_column = starts[read], ends[read], tensor[read], column[read]
    if not w_start.size or not r_start.size:
        return
    last = np.searchsorted(w_start, r_end, side="left") - 1
    hit = (last >= 0) & (w_end[np.maximum(last, 0)] > r_start)
    if hit.any():
        i = int(np.nonzero(hit)[0][0])
        j = last[i]
        raise ValueError(f"{fname}: {name(r_tensor[i], r_column[i])} and "
                         f"{name(w_tensor[j], w_column[j])} share memory; each tensor needs its "
                         "own memory (a gradient aliasing a parameter or state?)")


def clear() -> None:
    """Forget every table (tests; memory freed and reused at the same addresses is safe:
    a table holds addresses, and the key is the addresses themselves)."""
    with _lock:
        _tables.clear()
