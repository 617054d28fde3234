"""Promises kept under abuse of the process: fork, threads, environment, the on-disk cache.

Each case runs in a fresh interpreter (with a timeout, so a hang fails instead of
blocking the suite) and its own cache folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

TIMEOUT = 180


def run(code: str, tmp_path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "FUSEDOPT_CACHE_DIR": str(tmp_path / "cache"), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=TIMEOUT, env=environment, cwd=tmp_path)


PARALLEL_THEN_FORK = """
    import os, multiprocessing as mp, numpy as np, fusedopt as fo

    def work(i):
        a = [np.ones(1 << 16, np.float32), np.ones(1 << 16, np.float32),
             np.zeros(1 << 16, np.float32), np.zeros(1 << 16, np.float32)]
        fo.adam_(*a, step=1, lr=0.5)
        opt = fo.SGD([np.ones(1 << 16)], lr=0.1, max_grad_norm=1.0)
        opt.step([np.ones(1 << 16)])  # the parallel norm too
        return float(a[0][0])

    work(0)  # the parallel drivers run in the parent first
    pid = os.fork()
    if pid == 0:
        os._exit(0 if work(1) == 0.5 else 3)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    with mp.get_context("fork").Pool(2) as pool:
        print("pool", pool.map(work, range(4)))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_runs_updates_after_the_parent_ran_parallel_ones(tmp_path):
    out = run(PARALLEL_THEN_FORK, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "child 0" in out.stdout and "pool [0.5, 0.5, 0.5, 0.5]" in out.stdout


CONCURRENT = """
    import threading, numpy as np, fusedopt as fo, numba
    errors = []

    def work():
        try:
            a = [np.ones(1 << 16, np.float32), np.ones(1 << 16, np.float32),
                 np.zeros(1 << 16, np.float32), np.zeros(1 << 16, np.float32)]
            for t in range(1, 60):
                fo.adam_(*a, step=t)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(numba.threading_layer(), errors)
"""


@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_threads_may_update_at_once_on_any_threading_layer(tmp_path, layer):
    env = {"NUMBA_THREADING_LAYER": layer} if layer != "default" else {}
    out = run(CONCURRENT, tmp_path, **env)
    assert out.returncode == 0, out.stderr  # SIGABRT (-6) before the fix on workqueue
    assert out.stdout.strip().endswith("[]")


@pytest.mark.parametrize("variable", ["FUSEDOPT_PARALLEL_MIN_SIZE", "FUSEDOPT_CUDA_THREADS",
                                      "FUSEDOPT_CUDA_BLOCKS_PER_SM"])
def test_a_bad_environment_variable_warns_by_name_and_keeps_the_default(tmp_path, variable):
    out = run("import fusedopt, numpy as np\n"
              "fusedopt.sgd_(np.ones(3), np.ones(3), lr=0.5)\nprint('imported')", tmp_path,
              **{variable: "abc"})
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr
    assert variable in out.stderr and "abc" in out.stderr


def test_an_empty_cache_dir_setting_is_the_default_not_the_current_folder(tmp_path):
    home = tmp_path / "home"
    out = run("import fusedopt, numpy as np\nfusedopt.sgd_(np.ones(3), np.ones(3), lr=0.5)",
              tmp_path, FUSEDOPT_CACHE_DIR="", XDG_CACHE_HOME=str(home))
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "numba").exists()
    assert (home / "fusedopt" / "numba").is_dir()


USE_THE_CACHE = """
    import warnings, numpy as np, fusedopt as fo
    warnings.simplefilter("always")
    for n in (64, 1 << 16):
        a = [np.ones(n, np.float32), np.ones(n, np.float32), np.zeros(n, np.float32),
             np.zeros(n, np.float32)]
        fo.adam_(*a, step=1, lr=0.25)
        assert abs(a[0][0] - 0.75) < 1e-6, a[0][0]
    opt = fo.SGD([np.ones(4)], lr=0.1, max_grad_norm=1.0)
    opt.step([np.ones(4)])
    print("ok")
"""


def _damage(folder, pattern: str, content: bytes) -> int:
    hits = 0
    for path in folder.rglob(pattern):
        path.write_bytes(content)
        hits += 1
    return hits


@pytest.mark.parametrize("pattern, content", [
    ("*.nbi", b"\xde\xad garbage"), ("*.nbc", os.urandom(64)), ("*.nbi", b""),
    ("fusedopt_numba_drivers_*.py", b"\xff\xfe not python"),
])
def test_a_damaged_cache_is_rebuilt_with_one_warning(tmp_path, pattern, content):
    assert run(USE_THE_CACHE, tmp_path).stdout.strip() == "ok"
    assert _damage(tmp_path / "cache", pattern, content) > 0
    damaged = run(USE_THE_CACHE, tmp_path)
    assert damaged.returncode == 0 and damaged.stdout.strip() == "ok", damaged.stderr
    if pattern.startswith("*.nb"):
        assert damaged.stderr.count("could not be read") == 1, damaged.stderr
    again = run(USE_THE_CACHE, tmp_path)  # rebuilt: the next process is silent
    assert again.returncode == 0 and "could not be read" not in again.stderr


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX ownership")
def test_the_temp_fallback_is_used_only_when_private(tmp_path, monkeypatch):
    from fusedopt.backends import numba_cache

    monkeypatch.setattr(numba_cache.tempfile, "gettempdir", lambda: str(tmp_path))
    private = numba_cache._private_temp_dir()
    assert private is not None and os.stat(private).st_mode & 0o077 == 0
    os.chmod(os.path.dirname(private), 0o777)  # another user could plant pickles here
    assert numba_cache._private_temp_dir() is None
    os.chmod(os.path.dirname(private), 0o700)
    assert numba_cache._private_temp_dir() == private


def test_a_compile_error_is_not_blamed_on_the_cache(tmp_path, monkeypatch):
    """A driver that does not type (a bug, not a damaged file) raises its own error, with no
    'cache rebuilt' warning and nothing flushed."""
    import importlib.util
    import warnings

    from numba.core.errors import TypingError

    from fusedopt.backends import numba_cache, numba_cpu

    numba_cache._warned.clear()  # the warning is once per process: make sure it could come
    (tmp_path / "broken_driver.py").write_text(
        "from numba import njit\n\n@njit(cache=True)\ndef broken(x):\n    return x + undefined\n")
    spec = importlib.util.spec_from_file_location("broken_driver", tmp_path / "broken_driver.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cache warning would fail here
        with pytest.raises(TypingError):
            numba_cpu.call(module.broken, 1.0)
