"""Stateful optimizers and ParamArena, for every optimizer of the registry: equal to the
functional API, arena == list, groups and schedules, bad input; on NumPy and on the CuPy path
(the generated CUDA kernels run on the host, see host_cuda.py)."""

from __future__ import annotations

import numpy as np
import pytest
from optim_helpers import SHAPES, gradients, initial
from rule_table import OPTIMIZER_INFO, functional_equivalent, optimizer_class

import fusedopt as fo


def functional_run(name, params, grads_per_step, kwargs):
    """The same training with the functional API, by hand: the rule's own function, its state
    allocated here, the step counted here."""
    function, fkwargs, rule = functional_equivalent(name, kwargs)
    state = [[np.zeros_like(p) for _ in rule.state] for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for p, g, s in zip(params, grads, state, strict=True):
            function(p, g, *s, **({"step": t} if rule.needs_step else {}), **fkwargs)
    return params


def make(name, params, **extra):
    cls, switches = optimizer_class(name)
    return cls(params, **switches, **OPTIMIZER_INFO[name], **extra)


@pytest.mark.parametrize("name", list(OPTIMIZER_INFO))
def test_list_path_equals_functional_api(name):
    kwargs = OPTIMIZER_INFO[name]
    grads = gradients(12)
    params = initial()
    opt = make(name, params)
    for g in grads:
        assert opt.step(g) is True
    expected = functional_run(name, initial(), grads, kwargs)
    for got, want in zip(params, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert opt.step_count == 12


@pytest.mark.parametrize("name", list(OPTIMIZER_INFO))
def test_arena_path_equals_list_path_bit_for_bit(name):
    grads = gradients(12)
    arena = fo.ParamArena(initial())
    listed = initial()
    opt_arena, opt_list = make(name, arena), make(name, listed)
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
