"""The memory model (against sums by hand and against tracemalloc), the lecture's rules,
and the device probes (cgroup files as fixtures)."""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt as fo
from fusedopt import config, devices
from fusedopt.train import planner


def test_memory_model_by_hand():
    layers, b, m = [3, 4, 2], 5, 40
    parts = planner.step_peak_bytes(n_x=3, n_y=2, m=m, batch_size=b,
                                    shapes=planner.mlp_shapes(layers), layer_sizes=layers,
                                    optimizer="adam")
    # W1 (4,3) at 0, b1 (4,1) at 16, W2 (2,4) at 32, b2 (2,1) at 48: 50 float32 elements,
    # each tensor on a 64-byte (16-element) boundary, plus one 64-byte alignment pad.
    assert parts["parameters"] == parts["gradients"] == 50 * 4 + 64
    assert parts["optimizer state (2 slots)"] == 2 * 50 * 4
    assert parts["X{t}"] == 3 * 5 * 4 and parts["Y{t}"] == 2 * 5 * 4
    assert parts["permutation"] == 8 * 40
    assert parts["activations A[l]"] == parts["backward deltas"] == (4 + 2) * 5 * 4
    # The step's temporaries: the ReLU mask (4 x 5 bytes) and NumPy's casting buffer for it
    # (20 float32), 100 bytes; the gathering moment holds a second batch, 100 bytes too:
    # the larger (here the batch, on a tie) is the peak's.
    assert parts["previous X{t}, Y{t} (held while the next are gathered)"] == 3 * 5 * 4 + 2 * 5 * 4
    assert parts["Python and NumPy bookkeeping"] == (
        config.PLANNER_LOOP_OVERHEAD_BYTES + 4 * (config.PLANNER_TENSOR_OVERHEAD_BYTES
                                                  + 2 * config.PLANNER_STATE_OVERHEAD_BYTES)
        + config.PLANNER_BATCH_OVERHEAD_BYTES)  # 40 samples: 8 batches of 5
    big = planner.step_peak_bytes(n_x=3, n_y=2, m=m, batch_size=b, shapes=[(10,)],
                                  layer_sizes=[3, 1000, 2], optimizer="sgd")
    assert big["step temporaries"] == 1000 * 5 + 1000 * 5 * 4  # the mask and its buffer
    for optimizer, slots in (("sgd", 0), ("momentum", 1), ("rmsprop", 1), ("adamw", 2)):
        got = planner.parameter_bytes(planner.mlp_shapes(layers), np.float64, optimizer)
        # float64: 8-element steps, W1 at 0, b1 at 16, W2 at 24, b2 at 32: 34 elements.
        assert got[f"optimizer state ({slots} slots)"] == slots * 34 * 8
    custom = planner.step_peak_bytes(n_x=3, n_y=2, m=m, batch_size=b, shapes=[(10,)],
                                     activation_bytes_per_sample=100, optimizer="sgd",
                                     shuffle=False, gpu=True)
    assert custom["activations (per sample x b)"] == 500 and "permutation" not in custom
    assert "Python and NumPy bookkeeping" not in custom  # not in a GPU's memory


def test_arena_model_matches_a_real_arena():
    shapes = planner.mlp_shapes([7, 13, 5, 3])
    arena = fo.ParamArena(shapes)
    (buffer, _), = arena.buffers.values()
    assert buffer.size == planner.arena_buffer_elements(shapes, np.float32)


# The model against the measured peak of real training loops: tests/test_planner_loops.py.


def plan(m, layers=(100, 64, 10), memory=1 << 34, optimizer="adam"):
    return fo.plan_batch_size(((layers[0], m), np.float32), ((layers[-1], m), np.float32),
                              layer_sizes=list(layers), memory_limit=memory,
                              optimizer=optimizer)


def test_small_training_set_uses_the_full_batch():
    p = plan(1500)
    assert p.batch_size == 1500 and p.fits and "batch gradient descent" in p.reason
    assert p.max_fitting_batch_size == 1500


def test_large_training_set_uses_512_when_it_fits():
    p = plan(1_000_000)
    assert p.batch_size == 512 and p.fits and "power of two" in p.reason


def test_tight_memory_picks_the_largest_power_of_two_that_fits():
    layers = (2000, 4000, 10)
    at = {b: sum(plan(1_000_000, layers).candidates[b] for _ in [0]) for b in (128, 256)}
    budget = int((at[128] + at[256]) / 2 / (1 - config.PLANNER_MARGIN_FRACTION))
    p = plan(1_000_000, layers, memory=budget)
    assert p.batch_size == 128 and p.fits
    assert 128 <= p.max_fitting_batch_size < 256
    assert sum(p.breakdown.values()) == p.peak_bytes <= budget


def test_when_not_even_64_fits_it_says_what_does():
    layers = (2000, 4000, 10)
    full = plan(10**6, layers)
    needed = (full.peak_bytes_at(1) + full.candidates[64]) / 2
    p = plan(1_000_000, layers, memory=int(needed / (1 - config.PLANNER_MARGIN_FRACTION)))
    assert 1 <= p.batch_size < 64 and p.fits and "not even a mini-batch of 64" in p.reason
    nothing = plan(1_000_000, layers, memory=10**6)  # not even the training set fits
    assert not nothing.fits and nothing.max_fitting_batch_size == 0
    assert "nothing fits" in nothing.reason


def test_small_set_that_does_not_fit_whole_falls_back_to_a_power_of_two():
    layers = (2000, 4000, 10)
    budget = int(plan(1900, layers).candidates[512] * 1.01 / (1 - config.PLANNER_MARGIN_FRACTION))
    p = plan(1900, layers, memory=budget)
    assert p.batch_size == 512 and "does not fit" in p.reason


def test_plan_from_arrays_and_the_gpu_counts_the_data_set():
    X = np.zeros((20, 3000), np.float32)
    Y = np.zeros((2, 3000), np.float32)
    p = fo.plan_batch_size(X, Y, layer_sizes=[20, 8, 2])
    assert p.batch_size == 512 and p.data_fits_on_device and p.device == "cpu"
    g = fo.plan_batch_size(((20, 3000), np.float32), ((2, 3000), np.float32),
                           layer_sizes=[20, 8, 2], backend="cupy", memory_limit=1 << 30)
    assert g.device == "gpu" and g.breakdown["the training set X, Y"] == 22 * 3000 * 4
    assert "Python and NumPy bookkeeping" not in g.breakdown  # host memory, not the GPU's


@pytest.mark.parametrize("kwargs, word", [
    (dict(layer_sizes=[10, 2]), "n_x"),
    (dict(), "layer_sizes"),
    (dict(layer_sizes=[20, 2], activation_bytes_per_sample=10), "one of the two"),
    (dict(layer_sizes=[20, 2], optimizer="no_such_optimizer"), "optimizer"),
    (dict(layer_sizes=[20, 2], memory_limit=-1), "memory_limit"),
])
def test_plan_bad_input(kwargs, word):
    with pytest.raises(ValueError, match=word):
        fo.plan_batch_size(((20, 100), np.float32), ((2, 100), np.float32), **kwargs)


def test_plan_table_lists_the_breakdown():
    text = plan(10_000).table()
    for item in ("batch size: 512", "parameters", "optimizer state (2 slots)", "X{t}", "why:"):
        assert item in text


# --------------------------------------------------------------------- device probes
def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"


def test_meminfo_without_a_cgroup_limit(tmp_path):
    write(tmp_path / "meminfo", MEMINFO)
    write(tmp_path / "cg" / "memory.max", "max\n")
    info = devices.cpu_memory(str(tmp_path / "meminfo"), str(tmp_path / "cg"))
    assert info.available_bytes == 8000000 * 1024 and info.total_bytes == 16000000 * 1024


def test_cgroup_v2_limit_caps_what_is_available(tmp_path):
    write(tmp_path / "meminfo", MEMINFO)
    write(tmp_path / "cg" / "memory.max", str(2 * 2**30) + "\n")
    write(tmp_path / "cg" / "memory.current", str(512 * 2**20) + "\n")
    info = devices.cpu_memory(str(tmp_path / "meminfo"), str(tmp_path / "cg"))
    assert info.available_bytes == 2 * 2**30 - 512 * 2**20
    assert info.total_bytes == 2 * 2**30 and "cgroup v2" in info.source


def test_cgroup_v1_limit(tmp_path):
    write(tmp_path / "meminfo", MEMINFO)
    write(tmp_path / "cg" / "memory" / "memory.limit_in_bytes", str(3 * 2**30))
    write(tmp_path / "cg" / "memory" / "memory.usage_in_bytes", str(2**30))
    info = devices.cpu_memory(str(tmp_path / "meminfo"), str(tmp_path / "cg"))
    assert info.available_bytes == 2 * 2**30 and "cgroup v1" in info.source


def test_cgroup_v1_unlimited_is_ignored(tmp_path):
    write(tmp_path / "meminfo", MEMINFO)
    write(tmp_path / "cg" / "memory" / "memory.limit_in_bytes", "9223372036854771712")
    info = devices.cpu_memory(str(tmp_path / "meminfo"), str(tmp_path / "cg"))
    assert info.available_bytes == 8000000 * 1024


def test_a_limit_larger_than_the_machine_changes_nothing(tmp_path):
    write(tmp_path / "meminfo", MEMINFO)
    write(tmp_path / "cg" / "memory.max", str(64 * 2**30))
    write(tmp_path / "cg" / "memory.current", "0")
    info = devices.cpu_memory(str(tmp_path / "meminfo"), str(tmp_path / "cg"))
    assert info.available_bytes == 8000000 * 1024


def test_gpu_probe_adds_what_the_cupy_pool_holds_free(monkeypatch):
    import sys
    from types import SimpleNamespace

    fake = SimpleNamespace(
        cuda=SimpleNamespace(Device=lambda: SimpleNamespace(mem_info=(3 * 2**30, 80 * 2**30))),
        get_default_memory_pool=lambda: SimpleNamespace(free_bytes=lambda: 2**30))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert planner.available_memory("gpu") == 4 * 2**30
    p = fo.plan_batch_size(((20, 3000), np.float32), ((2, 3000), np.float32),
                           layer_sizes=[20, 8, 2], backend="cupy")
    assert p.available_bytes == 4 * 2**30 and p.device == "gpu"


@pytest.mark.parametrize("kwargs, error, word", [
    (dict(layer_sizes=[]), ValueError, "layer_sizes"),
    (dict(layer_sizes=[20, 2], backend="cuda"), ValueError, "backend"),
    (dict(activation_bytes_per_sample=-5, param_shapes=[(3,)]), ValueError,
     "activation_bytes_per_sample"),
])
def test_plan_more_bad_input(kwargs, error, word):
    with pytest.raises(error, match=word):
        fo.plan_batch_size(((20, 100), np.float32), ((2, 100), np.float32), **kwargs)
    with pytest.raises(ValueError, match="Y must be 1-D or 2-D"):
        fo.plan_batch_size(((20, 100), np.float32), ((2, 100, 1), np.float32),
                           layer_sizes=[20, 2])


def test_the_process_own_cgroup_is_read_not_the_mount_root(tmp_path):
    """A container's limit is often set on the process's cgroup, below the mount root."""
    write(tmp_path / "meminfo", MEMINFO)
    write(tmp_path / "proc_cgroup", "0::/kubepods/pod42/container7\n")
    write(tmp_path / "cg" / "memory.max", "max\n")
    write(tmp_path / "cg" / "kubepods" / "pod42" / "memory.max", str(3 * 2**30))
    write(tmp_path / "cg" / "kubepods" / "pod42" / "memory.current", str(2**30))
    write(tmp_path / "cg" / "kubepods" / "pod42" / "container7" / "memory.max", "max\n")
    info = devices.cpu_memory(str(tmp_path / "meminfo"), str(tmp_path / "cg"),
                              str(tmp_path / "proc_cgroup"))
    assert info.available_bytes == 2 * 2**30 and "pod42" in info.source


def test_the_tightest_of_nested_cgroup_v1_limits_applies(tmp_path):
    write(tmp_path / "meminfo", MEMINFO)
    write(tmp_path / "proc_cgroup", "4:memory:/outer/inner\n0::/\n")
    base = tmp_path / "cg" / "memory"
    write(base / "outer" / "memory.limit_in_bytes", str(6 * 2**30))
    write(base / "outer" / "memory.usage_in_bytes", "0")
    write(base / "outer" / "inner" / "memory.limit_in_bytes", str(2**30))
    write(base / "outer" / "inner" / "memory.usage_in_bytes", str(2**28))
    info = devices.cpu_memory(str(tmp_path / "meminfo"), str(tmp_path / "cg"),
                              str(tmp_path / "proc_cgroup"))
    assert info.available_bytes == 2**30 - 2**28 and "inner" in info.source
