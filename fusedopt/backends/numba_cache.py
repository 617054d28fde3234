"""Where the generated Numba drivers and their machine code live on disk, kept safe.

The generated module is written under :data:`fusedopt.config.CACHE_DIR`
(``~/.cache/fusedopt`` unless ``FUSEDOPT_CACHE_DIR`` says otherwise; an empty
value is the default, never the current folder) with a name that hashes its
source, the rules' sources, the rule language and the Numba and Python
versions, and Numba keeps the compiled code beside it (``__pycache__``).

* A fallback folder in the system's temporary directory is used only if this
  user owns it and nobody else can write to it: Numba unpickles what it finds
  there.
* A damaged cache never breaks a process: a generated module that does not hold
  its source is rewritten, and a compiled-code file Numba cannot read (garbage,
  truncated, another version) is dropped and rebuilt on the spot, with one
  warning per process (:func:`recover`).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import stat
import sys
import tempfile
import threading
import warnings

from fusedopt import config
from fusedopt.kernels import language
from fusedopt.kernels.registry import RULES

_warned = threading.Event()


def source_key(source: str) -> str:
    """A hash of everything the generated code depends on."""
    import numba

    from fusedopt.backends import numba_lowp  # the 16-bit helpers the drivers inline

    digest = hashlib.sha256()
    # The generated source names the rules; their bodies are inlined from the rule files.
    elements = [inspect.getsource(rule.element) for rule in RULES.values()]
    for part in (source, *elements, inspect.getsource(language), inspect.getsource(numba_lowp),
                 numba.__version__, sys.version):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def _private_temp_dir() -> str | None:
    """``<tmp>/fusedopt-<uid>/numba``, created 0700; None unless this user owns it and no one
    else may write to it (another user could plant files there for Numba to unpickle)."""
    if not hasattr(os, "getuid"):  # Windows: the temp folder is per user already
        return os.path.join(tempfile.gettempdir(), "fusedopt", "numba")
    top = os.path.join(tempfile.gettempdir(), f"fusedopt-{os.getuid()}")
    try:
        os.makedirs(top, mode=0o700, exist_ok=True)
        for path in (top, os.path.join(top, "numba")):
            if not os.path.exists(path):
                os.mkdir(path, 0o700)
            info = os.lstat(path)
            if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
                    or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
                return None
    except OSError:
        return None
    return os.path.join(top, "numba")


def directories() -> list[str]:
    """The folders to try, in order: the configured cache, then the private temp folder."""
    out = [os.path.join(os.path.abspath(config.CACHE_DIR), "numba")]
    fallback = _private_temp_dir()
    if fallback is not None:
        out.append(fallback)
    return out


def _holds(path: str, source: str) -> bool:
    """Whether ``path`` is a regular file whose bytes are exactly ``source``."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return f.read() == source.encode()
    except OSError:
        return False


def write_module(source: str, prefix: str) -> str | None:
    """Write the generated module atomically; return its path, or None if nowhere is writable.

    A file already there is used only if it holds exactly ``source``; anything else
    (garbage, a half-written file, a symlink) is replaced.
    """
    name = f"{prefix}_{source_key(source)}.py"
    for directory in directories():
        path = os.path.join(directory, name)
        if _holds(path, source):
            return path
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        except OSError:
            continue
        try:
            with os.fdopen(fd, "w") as f:
                f.write(source)
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
            return path
        except OSError:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return None


def recover(dispatcher, exc: BaseException) -> bool:
    """After ``dispatcher`` failed to load its cached machine code: drop that cache entry so
    the code is compiled afresh (and saved again), warning once. False if there was no cache
    to blame (the error is someone else's)."""
    from numba.core.errors import NumbaError

    if isinstance(exc, NumbaError):  # a compile error (typing, lowering): no cache to blame
        return False
    cache = getattr(dispatcher, "_cache", None)
    if cache is None or type(cache).__name__ == "NullCache":
        return False
    try:
        cache.flush()  # an empty index: the next lookup compiles and saves anew
    except Exception:  # the index cannot even be rewritten: compile without a cache
        from numba.core.caching import NullCache

        dispatcher._cache = NullCache()
    if not _warned.is_set():
        _warned.set()
        warnings.warn(f"fusedopt: the Numba cache of {dispatcher.py_func.__qualname__} could "
                      f"not be read ({type(exc).__name__}: {exc}); it was rebuilt "
                      f"({config.CACHE_DIR})", RuntimeWarning, stacklevel=3)
    return True


def disable(dispatcher) -> None:
    """Compile ``dispatcher`` without any on-disk cache from now on."""
    from numba.core.caching import NullCache

    dispatcher._cache = NullCache()
