"""Checkpoints: bit-identical resume for every optimizer, GPU <-> CPU, and every way a file or
a state dict can be wrong (refused, nothing changed)."""

from __future__ import annotations

import numpy as np
import pytest
from optim_helpers import gradients, initial
from optim_helpers import train as _train
from rule_table import OPTIMIZER_INFO, optimizer_class

import fusedopt as fo


@pytest.mark.parametrize("use_arena", [False, True], ids=["list", "arena"])
@pytest.mark.parametrize("name", list(OPTIMIZER_INFO))
def test_resume_from_checkpoint_is_bit_identical(tmp_path, name, use_arena):
    cls, switches = optimizer_class(name)
    kwargs = OPTIMIZER_INFO[name]
    grads = gradients(30)

    def make():
        params = fo.ParamArena(initial()) if use_arena else initial()
        return params, cls(params, schedule=fo.schedules.staircase(kwargs["lr"], 0.5, 2),
                           **switches, **kwargs)

    params, opt = make()
    arena = params if use_arena else None
    _train(opt, arena, grads[:15])
    opt.next_epoch()
    fo.save(tmp_path / "ck.npz", opt)
    _train(opt, arena, grads[15:])
    uninterrupted = [np.array(p) for p in (params.params if use_arena else params)]

    params2, opt2 = make()
    fo.load(tmp_path / "ck.npz", opt2)
    assert (opt2.step_count, opt2.epoch) == (15, 2)
    _train(opt2, params2 if use_arena else None, grads[15:])
    resumed = params2.params if use_arena else params2
    for a, b in zip(uninterrupted, resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_saved_on_gpu_loads_on_cpu_and_back(tmp_path, host_cupy):
    grads = gradients(20)
    on_gpu = fo.ParamArena([host_cupy.asarray(p) for p in initial()])
    opt_gpu = fo.Adam(on_gpu, lr=0.01)
    assert opt_gpu.backend == "cupy"
    _train(opt_gpu, on_gpu, grads[:10])
    fo.save(tmp_path / "gpu.npz", opt_gpu)

    on_cpu = fo.ParamArena(initial())
    opt_cpu = fo.Adam(on_cpu, lr=0.01)
    fo.load(tmp_path / "gpu.npz", opt_cpu)
    _train(opt_cpu, on_cpu, grads[10:])
    fo.save(tmp_path / "cpu.npz", opt_cpu)

    _train(opt_gpu, on_gpu, grads[10:])
    back_on_gpu = fo.ParamArena([host_cupy.asarray(p) for p in initial()])
    opt_back = fo.Adam(back_on_gpu, lr=0.01)
    fo.load(tmp_path / "cpu.npz", opt_back)
    for gpu, cpu, back in zip(on_gpu.params, on_cpu.params, back_on_gpu.params, strict=True):
        # The CUDA kernel (run here on the host) and the Numba loop round differently
        # in the last bit; after 10 steps they agree to float32 precision.
        np.testing.assert_allclose(np.array(gpu), cpu, rtol=2e-6, atol=1e-7)
        np.testing.assert_array_equal(np.array(back), cpu)
    assert isinstance(back_on_gpu.params[0], host_cupy.ndarray)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_checkpoint_is_refused_and_changes_nothing(tmp_path, damage):
    params = initial()
    opt = fo.Adam(params, lr=0.01)
    _train(opt, None, gradients(3))
    path = tmp_path / "ck.npz"
    fo.save(path, opt)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # a bit of a parameter's stored values (CRC-checked on load)
        where = data.index(params[2].tobytes()) + 5
        path.write_bytes(data[:where] + bytes([data[where] ^ 0x10]) + data[where + 1:])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 10)
    else:
        path.write_bytes(b"")
    target_params = initial(seed=5)
    target = fo.Adam(target_params, lr=0.01)
    _train(target, None, gradients(2, seed=9))
    before = target.state_dict()
    with pytest.raises(ValueError, match="not a readable fusedopt checkpoint"):
        fo.load(path, target)
    after = target.state_dict()
    assert after["step"] == before["step"] == 2
    for x, y in zip(before["groups"][0]["params"], after["groups"][0]["params"], strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("change, word", [
    (lambda d: d.update(optimizer="SGD"), "'SGD' optimizer"),
    (lambda d: d["groups"][0]["params"].pop(), "arrays for 5 parameters"),
    (lambda d: d["groups"][0]["state"]["exp_avg"].__setitem__(0, np.zeros((3, 4), np.float32)),
     r"exp_avg\[0\] is float32 \(3, 4\)"),
    (lambda d: d["groups"][0]["params"].__setitem__(1, np.zeros(3, np.float64)), "float64"),
    (lambda d: d["groups"][0]["hyper"].update(beta1=1.5), "beta1"),
    (lambda d: d.update(step=-1), "step=-1"),
    (lambda d: d.update(version=99), "version"),
])
def test_mismatched_state_is_refused_and_changes_nothing(change, word):
    source = fo.Adam(initial(), lr=0.01)
    _train(source, None, gradients(2))
    state = source.state_dict()
    change(state)
    params = initial(seed=3)
    target = fo.Adam(params, lr=0.02)
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match=word):
        target.load_state_dict(state)
    for b, p in zip(before, params, strict=True):
        np.testing.assert_array_equal(b, p)
    assert target.step_count == 0 and target.lr == 0.02 and target.groups[0].state is None


def test_save_is_atomic(tmp_path, monkeypatch):
    """A save that fails half-way leaves the previous checkpoint intact and no temp file."""
    opt = fo.SGD(initial(), lr=0.1)
    path = tmp_path / "ck.npz"
    fo.save(path, opt)
    good = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        fo.save(path, opt)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]


@pytest.mark.parametrize("change", [
    lambda d: d.update(groups=[5]),
    lambda d: d["groups"][0].update(hyper=[1, 2]),
    lambda d: d["groups"][0]["hyper"].update(lr="fast"),
    lambda d: d["groups"][0].update(state=7),
])
def test_malformed_state_is_a_value_error(change):
    source = fo.Adam(initial(), lr=0.01)
    _train(source, None, gradients(1))
    state = source.state_dict()
    change(state)
    with pytest.raises(ValueError):
        fo.Adam(initial(), lr=0.01).load_state_dict(state)


@pytest.mark.parametrize("name", ["adam", "adamw", "momentum"])
def test_checkpoints_written_before_the_registry_still_load(name):
    """Files saved by commit 97e7417 (tests/data): AdamW stored its fixed decoupling, and no
    optimizer stored the amsgrad switch. They load, and training goes on from them."""
    import pathlib

    path = pathlib.Path(__file__).parent / "data" / f"{name}_97e7417.npz"
    params = [np.zeros((3, 2), np.float32), np.zeros(4, np.float32)]
    cls = {"adam": fo.Adam, "adamw": fo.AdamW, "momentum": fo.Momentum}[name]
    opt = cls(params, lr=0.01) if name != "momentum" else cls(params, lr=0.01, nesterov=True)
    fo.load(path, opt)
    assert opt.step_count == 3 and params[0].any()
    assert opt.step([np.ones((3, 2), np.float32), np.ones(4, np.float32)])
