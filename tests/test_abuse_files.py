"""Promises kept under hostile files and command lines: a ValueError (or exit status 2) with a
named reason, nothing changed, nothing hanging."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
from optim_helpers import gradients, initial, train

import fusedopt as fo


@pytest.fixture
def checkpoint(tmp_path):
    opt = fo.Adam(initial(), lr=0.01)
    train(opt, None, gradients(2))
    path = tmp_path / "good.npz"
    fo.save(path, opt)
    return path.read_bytes()


def _refused(path, word="not a readable fusedopt checkpoint"):
    target = fo.Adam(initial(seed=3), lr=0.01)
    train(target, None, gradients(1, seed=4))
    before = target.state_dict()
    with pytest.raises(ValueError, match=word):
        fo.load(path, target)
    after = target.state_dict()
    assert after["step"] == before["step"]
    for x, y in zip(before["groups"][0]["params"], after["groups"][0]["params"], strict=True):
        np.testing.assert_array_equal(x, y)


def _central(data: bytes) -> int:
    return data.find(b"PK\x01\x02")


@pytest.mark.parametrize("damage", [
    "encrypted", "unknown_method", "deflated", "deep_json", "huge_shape", "object_dtype",
    "meta_not_object", "stray_member"])
def test_a_hostile_checkpoint_is_a_value_error_and_changes_nothing(tmp_path, checkpoint,
                                                                   damage):
    data = bytearray(checkpoint)
    if damage == "encrypted":  # the general-purpose flag's bit 0 in the central directory
        data[_central(checkpoint) + 8] |= 1
    elif damage in ("unknown_method", "deflated"):  # the compression method field
        data[_central(checkpoint) + 10] = 99 if damage == "unknown_method" else 8
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            def member(name, array):
                npy = io.BytesIO()
                np.save(npy, array, allow_pickle=True)
                archive.writestr(name, npy.getvalue())

            if damage == "deep_json":
                member("__meta__.npy", np.array("[" * 200_000 + "]" * 200_000))
            elif damage == "huge_shape":  # a header claiming 4 TiB, with 16 bytes behind it
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    header, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})
                archive.writestr("g0.params.0.npy", header.getvalue() + b"\0" * 16)
                member("__meta__.npy", np.array(json.dumps({"groups": []})))
            elif damage == "object_dtype":
                member("g0.params.0.npy", np.array([{"x": 1}], dtype=object))
                member("__meta__.npy", np.array(json.dumps({"groups": []})))
            elif damage == "meta_not_object":
                member("__meta__.npy", np.array(json.dumps([1, 2])))
            else:
                archive.writestr("evil.txt", b"hello")
                member("__meta__.npy", np.array(json.dumps({"groups": []})))
        data = bytearray(buffer.getvalue())
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(data))
    _refused(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_loading_a_fifo_is_refused_instead_of_blocking(tmp_path):
    fifo = tmp_path / "ck.npz"
    os.mkfifo(fifo)
    outcome = []

    def attempt():
        try:
            fo.load(fifo, fo.Adam(initial(), lr=0.01))
        except ValueError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)
    assert outcome and "not a regular file" in outcome[0]  # before the fix: blocked forever


def test_loading_a_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"not a regular file|cannot be opened"):
        fo.load(tmp_path, fo.Adam(initial(), lr=0.01))


@pytest.mark.skipif(not hasattr(os, "umask"), reason="POSIX permissions")
def test_a_checkpoint_gets_the_permissions_of_any_new_file(tmp_path):
    old = os.umask(0o022)
    try:
        fo.save(tmp_path / "shared.npz", fo.SGD(initial(), lr=0.1))
    finally:
        os.umask(old)
    assert (tmp_path / "shared.npz").stat().st_mode & 0o777 == 0o644  # not 0600


# ------------------------------------------------------------------ the command line
def fusedopt(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fusedopt", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("args, word", [
    (["bench", "--repeats", "0", "--seconds", "0"], "--repeats"),
    (["bench", "--seconds", "-1"], "--seconds"),
    (["plan", "--m", "1000", "--layers", "784,1e300,10"], "--layers"),
    (["demo", "--out", "a_file/plots"], "out="),
    (["profile", "--out", "a_file", "--seconds", "0.05"], "out_dir="),
])
def test_the_command_line_refuses_with_one_line_before_any_work(tmp_path, args, word):
    (tmp_path / "a_file").write_text("not a folder")
    out = fusedopt(*args, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert word in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "held-out accuracy" not in out.stdout  # nothing was trained first
