"""Stateful optimizers and ParamArena: equal to the functional API, arena == list,
clipping and non-finite steps, checkpoints, bad input; on NumPy and on the CuPy path
(the generated CUDA kernels run on the host, see host_cuda.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fusedopt as fo

SHAPES = [(4, 3), (3,), (5, 2), (1,), (17,)]

OPTIMIZERS = {
    "SGD": (fo.SGD, dict(lr=0.05, weight_decay=0.01)),
    "Momentum": (fo.Momentum, dict(lr=0.05, beta=0.8, nesterov=True, dampening=0.0)),
    "RMSprop": (fo.RMSprop, dict(lr=0.01, beta=0.9, eps=1e-6, weight_decay=0.01)),
    "Adam": (fo.Adam, dict(lr=0.01, beta1=0.8, beta2=0.95, weight_decay=0.01)),
    "AdamW": (fo.AdamW, dict(lr=0.01, weight_decay=0.1)),
}


def initial(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def gradients(steps, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def functional_run(name, params, grads_per_step, kwargs):
    """The same training with the functional API, by hand."""
    state = [[np.zeros_like(p) for _ in range({"SGD": 0, "Momentum": 1, "RMSprop": 1}
                                                .get(name, 2))] for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for p, g, s in zip(params, grads, state, strict=True):
            if name == "SGD":
                fo.sgd_(p, g, **kwargs)
            elif name == "Momentum":
                fo.momentum_(p, g, *s, **kwargs)
            elif name == "RMSprop":
                fo.rmsprop_(p, g, *s, **kwargs)
            elif name == "Adam":
                fo.adam_(p, g, *s, step=t, **kwargs)
            else:
                fo.adamw_(p, g, *s, step=t, **kwargs)
    return params


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_list_path_equals_functional_api(name):
    cls, kwargs = OPTIMIZERS[name]
    grads = gradients(12)
    params = initial()
    opt = cls(params, **kwargs)
    for g in grads:
        assert opt.step(g) is True
    expected = functional_run(name, initial(), grads, kwargs)
    for got, want in zip(params, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert opt.step_count == 12


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_arena_path_equals_list_path_bit_for_bit(name):
    cls, kwargs = OPTIMIZERS[name]
    grads = gradients(12)
    arena = fo.ParamArena(initial())
    listed = initial()
    opt_arena, opt_list = cls(arena, **kwargs), cls(listed, **kwargs)
    for g in grads:
        for view, value in zip(arena.grads, g, strict=True):
            view[...] = value
        opt_arena.step()
        opt_list.step(g)
    for got, want in zip(arena.params, listed, strict=True):
        np.testing.assert_array_equal(got, want)
    # The state is laid out like the arena: per-tensor views equal the list path's state.
    a, b = opt_arena.state_dict()["groups"][0], opt_list.state_dict()["groups"][0]
    for key in a["state"]:
        for x, y in zip(a["state"][key], b["state"][key], strict=True):
            np.testing.assert_array_equal(x, y)


def test_arena_is_one_launch_per_dtype(host_cupy):
    """However many tensors, an arena step launches one kernel per dtype."""
    from host_cuda import HostRawKernel

    shapes = [(3, 3)] * 40 + [(5,)] * 40
    arena = fo.ParamArena([host_cupy.asarray(np.ones(s, np.float32)) for s in shapes[:40]]
                          + [host_cupy.asarray(np.ones(s, np.float64)) for s in shapes[40:]])
    opt = fo.Adam(arena, lr=0.1)
    arena.grads[0][...] = 1.0
    HostRawKernel.launches = []
    opt.step()
    assert len(HostRawKernel.launches) == 2  # float32 and float64
    assert arena.params[0][0, 0] == pytest.approx(0.9, rel=1e-6)
    assert arena.params[1][0, 0] == 1.0  # zero gradient, zero step


def test_param_arena_views_copies_and_alignment():
    source = initial()
    arena = fo.ParamArena(source)
    assert [p.shape for p in arena.params] == SHAPES and len(arena) == len(SHAPES)
    for view, original in zip(arena.params, source, strict=True):
        np.testing.assert_array_equal(view, original)
        assert view.ctypes.data % 64 == 0  # each tensor starts on a cache line
    arena.params[0][0, 0] = 42.0  # views write into the one buffer
    (buffer, grad_buffer), = arena.buffers.values()
    assert buffer[0] == 42.0 and source[0][0, 0] != 42.0
    np.matmul(np.ones((4, 1), np.float32), np.ones((1, 3), np.float32), out=arena.grads[0])
    assert grad_buffer[:12].sum() == 12.0
    arena.zero_grad()
    assert not grad_buffer.any()
    shaped = fo.ParamArena([(2, 3), 4, (5,)], dtype=np.float64)
    assert [p.dtype for p in shaped.params] == [np.float64] * 3
    assert not any(p.any() for p in shaped.params)


@pytest.mark.parametrize("bad, error, word", [
    ([], ValueError, "empty"),
    ([np.zeros(3, np.int64)], TypeError, "dtype"),
    (["weights"], TypeError, "str"),
    ([(2, -1)], ValueError, "negative"),
])
def test_param_arena_bad_input(bad, error, word):
    with pytest.raises(error, match=word):
        fo.ParamArena(bad)


def test_groups_with_own_hyperparameters_and_schedule_by_epoch():
    decay, no_decay = fo.ParamArena(initial()[:3]), fo.ParamArena(initial()[3:])
    schedule = fo.schedules.exponential(0.1, base=0.5)
    opt = fo.Adam([{"params": decay, "weight_decay": 0.1},
                   {"params": no_decay, "schedule": schedule}], lr=0.01)
    assert opt.lr == 0.01
    assert opt._lr(opt.groups[1], 1) == pytest.approx(0.05)  # epoch 1: 0.1 * 0.5
    opt.next_epoch()
    assert opt._lr(opt.groups[1], 1) == pytest.approx(0.025)
    assert opt.groups[0].hyper["weight_decay"] == 0.1 and opt.groups[1].hyper["weight_decay"] == 0
    by_step = fo.SGD(initial(), lr=1.0, schedule=fo.schedules.inverse_sqrt(1.0), by="step")
    assert by_step.lr == 1.0
    by_step.step(gradients(1)[0])
    assert by_step.lr == pytest.approx(1 / np.sqrt(2))


# ------------------------------------------------------------ clipping and non-finite
def test_clipping_by_global_norm_scales_inside_the_fused_step():
    grads = gradients(5)
    params = initial()
    opt = fo.Momentum(params, lr=0.1, max_grad_norm=0.5)
    expected = initial()
    velocity = [np.zeros_like(p) for p in expected]
    for g in grads:
        opt.step(g)
        norm = np.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g))
        scale = min(1.0, 0.5 / (norm + 1e-6))
        for p, x, v in zip(expected, g, velocity, strict=True):
            fo.momentum_(p, (x * np.float32(scale)).astype(np.float32), v, lr=0.1)
        assert opt.last_grad_norm == pytest.approx(norm, rel=1e-12)
    for got, want in zip(params, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for g in grads[0]:  # the gradients themselves are not rewritten
        assert np.isfinite(g).all()


@pytest.mark.parametrize("arena", [False, True], ids=["list", "arena"])
def test_nonfinite_step_is_skipped_and_changes_nothing(arena):
    grads = gradients(3)
    grads[1][2][1, 1] = np.inf
    grads[1][4][0] = np.nan
    if arena:
        params = fo.ParamArena(initial())
        opt = fo.Adam(params, lr=0.1, nonfinite="skip")
    else:
        params = initial()
        opt = fo.Adam(params, lr=0.1, nonfinite="skip")
    results = []
    for g in grads:
        if arena:
            for view, value in zip(params.grads, g, strict=True):
                view[...] = value
            before = opt.state_dict()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                results.append(opt.step())
        else:
            before = opt.state_dict()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                results.append(opt.step(g))
        if results[-1] is False:
            after = opt.state_dict()
            assert after["step"] == before["step"] and any("skipped" in str(w.message)
                                                           for w in caught)
            for key in ("params",):
                for x, y in zip(before["groups"][0][key], after["groups"][0][key], strict=True):
                    np.testing.assert_array_equal(x, y)
            for key in before["groups"][0]["state"]:
                for x, y in zip(before["groups"][0]["state"][key],
                                after["groups"][0]["state"][key], strict=True):
                    np.testing.assert_array_equal(x, y)
    assert results == [True, False, True]
    assert opt.skipped_steps == 1 and opt.step_count == 2


def test_nonfinite_raise_names_the_tensor_and_changes_nothing():
    params = initial()
    opt = fo.RMSprop(params, lr=0.1, nonfinite="raise")
    grads = gradients(1)[0]
    grads[3][0] = np.nan
    before = [p.copy() for p in params]
    with pytest.raises(FloatingPointError, match=r"tensor 3 \(1,\)"):
        opt.step(grads)
    for b, p in zip(before, params, strict=True):
        np.testing.assert_array_equal(b, p)
    assert opt.step_count == 0


def test_large_finite_float32_gradients_are_not_taken_for_overflow():
    """The norm is accumulated in float64: 1e30 squared overflows float32, not float64."""
    params = [np.zeros(4, np.float32)]
    opt = fo.SGD(params, lr=1e-30, nonfinite="raise", max_grad_norm=1e40)
    assert opt.step([np.full(4, 1e30, np.float32)])
    assert opt.last_grad_norm == pytest.approx(2e30)


# --------------------------------------------------------------------- checkpoints
def _train(opt, arena, grads):
    for g in grads:
        if arena is not None:
            for view, value in zip(arena.grads, g, strict=True):
                view[...] = value
            opt.step()
        else:
            opt.step(g)


@pytest.mark.parametrize("use_arena", [False, True], ids=["list", "arena"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_resume_from_checkpoint_is_bit_identical(tmp_path, name, use_arena):
    cls, kwargs = OPTIMIZERS[name]
    grads = gradients(30)

    def make():
        params = fo.ParamArena(initial()) if use_arena else initial()
        return params, cls(params, schedule=fo.schedules.staircase(kwargs["lr"], 0.5, 2),
                           **kwargs)

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


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("grads, error, word", [
    (lambda g: g[:-1], ValueError, "4 gradients for 5 parameters"),
    (lambda g: [*g[:2], np.zeros((5, 3), np.float32), *g[3:]], ValueError, r"grads\[2\]"),
    (lambda g: [*g[:1], g[1].astype(np.float64), *g[2:]], ValueError, "float64"),
    (lambda g: [*g[:1], g[1].tolist(), *g[2:]], TypeError, r"grads\[1\]"),
    (lambda g: None, TypeError, "needs grads"),
])
def test_bad_gradients_change_nothing(grads, error, word):
    params = initial()
    opt = fo.Adam(params, lr=0.1)
    before = [p.copy() for p in params]
    with pytest.raises(error, match=word):
        opt.step(grads(gradients(1)[0]))
    for b, p in zip(before, params, strict=True):
        np.testing.assert_array_equal(b, p)
    assert opt.step_count == 0


def test_grad_on_another_device_is_refused(host_cupy):
    params = [host_cupy.asarray(p) for p in initial()]
    opt = fo.Adam(params, lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[0\] is a numpy array but the parameter is a cupy"):
        opt.step(gradients(1)[0])


def test_list_path_on_the_cupy_backend_matches_numpy(host_cupy):
    grads = gradients(8)
    on_gpu = [host_cupy.asarray(p) for p in initial()]
    on_cpu = initial()
    gpu_opt, cpu_opt = fo.RMSprop(on_gpu, lr=0.01), fo.RMSprop(on_cpu, lr=0.01)
    assert gpu_opt.backend == "cupy" and cpu_opt.backend == "numba"
    for g in grads:
        gpu_opt.step([host_cupy.asarray(x) for x in g])
        cpu_opt.step(g)
    for a, b in zip(on_gpu, on_cpu, strict=True):
        np.testing.assert_allclose(np.array(a), b, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("make, error, word", [
    (lambda: fo.Adam(initial(), lr=-1.0), ValueError, "lr"),
    (lambda: fo.Adam(initial(), betas=(0.9, 0.99)), TypeError, "betas"),
    (lambda: fo.SGD(initial(), lr=0.1, nonfinite="ignore"), ValueError, "nonfinite"),
    (lambda: fo.SGD(initial(), lr=0.1, max_grad_norm=0.0), ValueError, "max_grad_norm"),
    (lambda: fo.SGD(initial(), lr=0.1, by="batch"), ValueError, "by="),
    (lambda: fo.SGD(initial(), lr=0.1, schedule=0.5), TypeError, "schedule"),
    (lambda: fo.SGD([{"params": initial(), "momentum": 0.9}], lr=0.1), ValueError, "momentum"),
    (lambda: fo.SGD(np.zeros(3, np.float32), lr=0.1), TypeError, "params"),
    (lambda: fo.SGD([np.zeros(3, np.int32)], lr=0.1), TypeError, "dtype"),
])
def test_bad_construction(make, error, word):
    with pytest.raises(error, match=word):
        make()


def test_arena_optimizer_refuses_explicit_grads_and_lr_setter_respects_schedule():
    arena = fo.ParamArena(initial())
    opt = fo.SGD(arena, lr=0.1)
    with pytest.raises(TypeError, match=r"arena\.grads"):
        opt.step(gradients(1)[0])
    opt.lr = 0.5
    assert opt.lr == 0.5
    scheduled = fo.SGD(arena, lr=0.1, schedule=fo.schedules.constant(0.2))
    with pytest.raises(ValueError, match="schedule"):
        scheduled.lr = 0.3


def test_a_failing_schedule_changes_nothing():
    first, second = initial()[:2], initial()[2:]
    opt = fo.SGD([{"params": first}, {"params": second,
                                      "schedule": lambda t: float("nan")}], lr=0.1)
    before = [p.copy() for p in first + second]
    with pytest.raises(ValueError, match="schedule"):
        opt.step(gradients(1)[0])
    for b, p in zip(before, first + second, strict=True):
        np.testing.assert_array_equal(b, p)
    assert opt.step_count == 0
    with pytest.raises(ValueError, match="schedule"):
        opt.lr = 0.5
    assert opt.groups[0].hyper["lr"] == 0.1  # the setter changed no group either


def test_a_parameter_given_twice_is_refused():
    p = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        fo.SGD([p, p], lr=0.1)
    buffer = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        fo.Adam([buffer[:6], buffer[4:]])
    arena = fo.ParamArena(initial())
    with pytest.raises(ValueError, match="share memory"):
        fo.Adam([{"params": arena}, {"params": arena}])


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_ndarray_subclasses_are_updated_in_place():
    matrix = np.asmatrix(np.ones((1, 3), np.float32))
    opt = fo.SGD([matrix], lr=0.5)
    opt.step([np.asmatrix(np.ones((1, 3), np.float32))])
    np.testing.assert_array_equal(np.asarray(matrix), 0.5)


def test_gpu_grad_aliasing_its_parameter_is_refused(host_cupy):
    p = host_cupy.asarray(np.ones(8, np.float32))
    opt = fo.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="shares memory with its parameter"):
        opt.step([p])


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
