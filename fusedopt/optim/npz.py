"""The checkpoint file: an ``.npz`` archive written atomically and read defensively.

Writing: a temporary file in the target folder (created with the process's
umask, as any new file), flushed to disk, then renamed over the target: the
path never holds half a checkpoint.

Reading: only a regular file is opened (a FIFO or a device would block or
stream forever); the archive's members must be stored uncompressed (as
``numpy.savez`` writes them), hold plain numeric arrays or the metadata string,
and declare shapes that match their stored sizes before anything is allocated;
anything else, from a bad zip directory to deeply nested metadata, is a
``ValueError``.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import zipfile
import zlib

import numpy as np

#: The largest metadata string read (JSON of counters and hyperparameters).
MAX_META_BYTES = 64 * 2**20
_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, IndexError, AttributeError,
           zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, RecursionError,
           MemoryError, struct.error, UnicodeDecodeError, OverflowError)


def write(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """``numpy.savez`` of ``arrays`` to ``path``, atomically, with the umask's permissions."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    for attempt in range(100):
        tmp = os.path.join(directory, f".fusedopt-{os.getpid()}-{os.urandom(6).hex()}.npz.tmp")
        try:  # O_EXCL: never another file; mode 0o666 less the umask, as open() would make it
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            if attempt == 99:
                raise
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"member {info.filename} is compressed; fusedopt writes stored members")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"member {info.filename} has .npy version {version}")
        if dtype.hasobject or dtype.kind not in "fiubU":
            raise ValueError(f"member {info.filename} holds {dtype}, not numbers")
        count = 1
        for d in shape:
            count *= int(d)
        if count * dtype.itemsize != info.file_size - f.tell():
            raise ValueError(f"member {info.filename} declares shape {shape} but stores "
                             f"{info.file_size - f.tell()} bytes")
        if dtype.kind == "U" and count * dtype.itemsize > MAX_META_BYTES:
            raise ValueError(f"member {info.filename} is a {count * dtype.itemsize}-byte string")
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise ValueError(f"member {info.filename} is truncated")
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def read(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays) of a checkpoint; any defect is a ``ValueError`` naming the file."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"load: no checkpoint at {path}") from None
    except OSError as exc:
        raise ValueError(f"load: {path} cannot be opened ({exc.strerror or exc})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ValueError(f"load: {path} is not a regular file (a FIFO, device or folder); "
                         "a checkpoint is a file written by fusedopt.save")
    with os.fdopen(fd, "rb") as f:
        try:
            with zipfile.ZipFile(f) as archive:
                members = archive.infolist()
                if sum(m.file_size for m in members) > info.st_size:
                    raise ValueError("its members claim more bytes than the file holds")
                entries = {}
                for member in members:
                    if not member.filename.endswith(".npy"):
                        raise ValueError(f"unexpected member {member.filename!r}")
                    entries[member.filename[:-4]] = _member(archive, member)
            meta = entries.pop("__meta__", None)
            if meta is None or meta.dtype.kind != "U" or meta.shape != ():
                raise ValueError("no metadata")
            meta = json.loads(str(meta))
            if not isinstance(meta, dict):
                raise ValueError("the metadata is not a JSON object")
        except _ERRORS as exc:
            raise ValueError(f"load: {path} is not a readable fusedopt checkpoint (corrupt, "
                             f"truncated or not a checkpoint): {type(exc).__name__}: "
                             f"{str(exc)[:200]}") from None
    return meta, entries
