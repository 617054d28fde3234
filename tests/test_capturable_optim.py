"""fusedopt.optim's capturable step: clipping, the non-finite skip and the step counts on
the device (fusedopt.optim.device_step).

The oracle is the default step, which reads the norm on the host and is itself checked
against the float64 reference (test_optimizers.py, test_clipping*.py): the capturable
step must store the same bits, skip the same steps and count alike. On the emulated GPU
(tests/host_cuda.py) it must also read nothing on the host: every conversion of a
device array to a Python value raises during its steps.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest

import fusedopt as fo

SHAPES = [(5, 3), (7,), (64, 9), (1,)]
CASES = [
    ("Adam", dict(lr=1e-2, weight_decay=0.01)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-3)),
    ("Lion", dict(lr=1e-3, weight_decay=0.1)),
    ("SGD", dict(lr=1e-2)),
    ("Momentum", dict(lr=1e-2, beta=0.9)),
    ("NAdam", dict(lr=2e-3, momentum_decay=0.01)),
]


def params(xp=np, dtype=np.float32, seed=1):
    rng = np.random.default_rng(seed)
    return [xp.asarray(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def gradients(t, dtype=np.float32, scale=3.0, nan_at=(), inf_at=()):
    rng = np.random.default_rng(100 + t)
    out = [(rng.standard_normal(s) * scale).astype(dtype) for s in SHAPES]
    if t in nan_at:
        out[1][2] = np.nan
    if t in inf_at:
        out[2][0, 0] = -np.inf
    return out


def run(opt, steps, arena=None, xp=np, dtype=np.float32, **grad_kwargs):
    for t in range(steps):
        grads = gradients(t, dtype, **grad_kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the host path's skip warning
            if arena is not None:
                for buffer, g in zip(arena.grads, grads, strict=True):
                    buffer[...] = xp.asarray(g)
                opt.step()
            else:
                opt.step([xp.asarray(g) for g in grads])


def assert_same_bits(a, b):
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)


@pytest.mark.parametrize("arena", [True, False], ids=["arena", "list"])
@pytest.mark.parametrize("name, kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_clip_and_skip_on_the_device_equal_the_host_step(name, kwargs, arena):
    made = [params(), params()]
    if arena:
        made = [fo.ParamArena(p) for p in made]
    options = dict(kwargs, max_grad_norm=0.5, nonfinite="skip")
    ours = getattr(fo, name)(made[0], capturable=True, **options)
    theirs = getattr(fo, name)(made[1], **options)
    for opt, p in zip((ours, theirs), made, strict=True):
        run(opt, 12, p if arena else None, nan_at=(4,), inf_at=(9,))
    tensors = [m.params if arena else m for m in made]
    assert_same_bits(*tensors)
    assert (ours.step_count, ours.skipped_steps) == (theirs.step_count, theirs.skipped_steps)
    assert (ours.step_count, ours.skipped_steps) == (10, 2)
    assert float(ours.last_grad_norm) == theirs.last_grad_norm


@pytest.mark.parametrize("scale", [1e-3, 1e200], ids=["small", "beyond-float64"])
def test_float64_norms_of_every_range_clip_alike(scale):
    """float64 gradients take the three accumulators; 1e200 squared overflows float64, so
    the clip factor comes from the scaled sum (clip_scale's branch)."""
    made = [params(dtype=np.float64), params(dtype=np.float64)]
    ours = fo.Adam(made[0], lr=1e-2, max_grad_norm=1.0, nonfinite="skip", capturable=True)
    theirs = fo.Adam(made[1], lr=1e-2, max_grad_norm=1.0, nonfinite="skip")
    for opt in (ours, theirs):
        run(opt, 4, dtype=np.float64, scale=scale)
    assert_same_bits(*made)
    assert ours.skipped_steps == theirs.skipped_steps == 0
    assert float(ours.last_grad_norm) == theirs.last_grad_norm


def test_without_a_check_a_nan_goes_through_as_on_the_host():
    made = [params(), params()]
    ours, theirs = (fo.Adam(made[0], lr=1e-2, max_grad_norm=0.5, capturable=True),
                    fo.Adam(made[1], lr=1e-2, max_grad_norm=0.5))
    for opt in (ours, theirs):
        run(opt, 3, nan_at=(1,))
    assert_same_bits(*made)
    assert ours.step_count == 3 and np.isnan(made[0][1]).any()


def test_bf16_master_weights_and_a_grad_scale_equal_the_host_step():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")
    made = [[p.astype(ml_dtypes.bfloat16) for p in params()] for _ in range(2)]
    options = dict(lr=1e-2, max_grad_norm=2.0, nonfinite="skip", master_weights=True)
    ours = fo.AdamW(made[0], capturable=True, **options)
    theirs = fo.AdamW(made[1], **options)
    for t in range(6):
        grads = [g.astype(ml_dtypes.bfloat16) for g in gradients(t, nan_at=(2,))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ours.step(grads, grad_scale=0.25)
            theirs.step(grads, grad_scale=0.25)
    assert_same_bits([p.view(np.uint16) for p in made[0]], [p.view(np.uint16) for p in made[1]])
    assert ours.skipped_steps == theirs.skipped_steps == 1


def test_a_step_schedule_runs_by_calls_and_checkpoints_carry_the_device_counts(tmp_path):
    """A skipped step still advances a by="step" schedule (the host does not know); the
    checkpoint holds the device counts, and loads into either kind of optimizer."""
    schedule = fo.schedules.exponential(1e-2, 0.9)
    made = [params(), params()]
    ours = fo.Adam(made[0], schedule=schedule, by="step", nonfinite="skip", capturable=True)
    run(ours, 5, nan_at=(2,))
    assert (ours.step_count, ours.skipped_steps) == (4, 1)
    assert ours.lr == pytest.approx(schedule(6))  # the sixth call's
    fo.save(tmp_path / "opt.npz", ours)
    plain = fo.Adam(made[1], schedule=schedule, by="step", nonfinite="skip")
    fo.load(tmp_path / "opt.npz", plain)
    assert (plain.step_count, plain.skipped_steps) == (4, 1)
    again = fo.Adam(params(), schedule=schedule, by="step", nonfinite="skip", capturable=True)
    fo.load(tmp_path / "opt.npz", again)
    assert (again.step_count, again.skipped_steps) == (4, 1)
    assert again.lr == pytest.approx(schedule(6))  # by calls: the skipped one counts
    assert plain.lr == pytest.approx(schedule(5))  # by applied steps
    assert_same_bits(again.groups[0].state[0], ours.groups[0].state[0])


def test_what_a_capturable_step_cannot_do_is_refused_by_name(monkeypatch):
    import dataclasses

    # every built-in rule computes its scalars on the device; a rule that could not
    variant = fo.NAdam.variant
    host_only = dataclasses.replace(variant.rule, device_scalars=False)
    monkeypatch.setattr(fo.NAdam, "variant", dataclasses.replace(variant, rule=host_only))
    with pytest.raises(ValueError, match="capturable=True is not supported with the rule "
                                         "'nadam'"):
        fo.NAdam(params(), capturable=True)
    with pytest.raises(ValueError, match="cannot raise on a non-finite gradient"):
        fo.Adam(params(), capturable=True, nonfinite="raise")
    with pytest.raises(ValueError, match="cannot round stochastically"):
        fo.Adam(params(), capturable=True, stochastic_rounding=True)
    with pytest.raises(ValueError, match="'numba' or 'cupy' backend"):
        fo.Adam(params(), capturable=True, backend="numpy")
    with pytest.raises(ValueError, match="capturable=True with shard_state=True"):
        fo.Adam(fo.ParamArena(params()), capturable=True, shard_state=True)
    with pytest.raises(TypeError, match="capturable must be True or False"):
        fo.Adam(params(), capturable=1)


@contextlib.contextmanager
def no_device_reads(array_type):
    """Every conversion of an emulated device array to a Python value raises."""
    names = ("__float__", "__int__", "__bool__", "__index__", "item", "tolist", "get")
    saved = {n: array_type.__dict__.get(n) for n in names}

    def refuse(*args, **kwargs):
        raise AssertionError("a device array was read on the host")

    try:
        for n in names:
            setattr(array_type, n, refuse)
        yield
    finally:
        for n, method in saved.items():
            if method is None:
                delattr(array_type, n)
            else:
                setattr(array_type, n, method)


@pytest.mark.parametrize("name", ["Adam", "NAdam"])
@pytest.mark.parametrize("arena", [True, False], ids=["arena", "list"])
def test_on_the_emulated_gpu_nothing_is_read_and_the_bits_are_the_cpus(host_cupy, arena,
                                                                       name):
    from host_cuda import HostRawKernel, ndarray

    made = [params(host_cupy), params()]
    if arena:
        made = [fo.ParamArena(made[0]), fo.ParamArena(made[1])]
    options = dict(lr=1e-2, max_grad_norm=0.5, nonfinite="skip")
    ours = getattr(fo, name)(made[0], capturable=True, **options)
    theirs = getattr(fo, name)(made[1], **options)
    run(ours, 1, made[0] if arena else None, xp=host_cupy)  # warm-up: tables uploaded
    HostRawKernel.launches = []
    with no_device_reads(ndarray):
        for t in range(1, 8):
            grads = [host_cupy.asarray(g) for g in gradients(t, nan_at=(3,))]
            if arena:
                for buffer, g in zip(made[0].grads, grads, strict=True):
                    buffer[...] = g
                ours.step()
            else:
                ours.step(grads)
    # a step: one launch of the update, skipped ones too; a list's norm is one launch more
    # (the multi-tensor norm), an arena's one reduction of its buffer
    step = [f"fusedopt_{name.lower()}_float32_multi_capturable"]
    if not arena:
        step = ["fusedopt_norm_sums_multi_float32", *step]
    assert [name for name, _, _ in HostRawKernel.launches] == step * 7
    run(theirs, 8, made[1] if arena else None, nan_at=(3,))
    tensors = [m.params if arena else m for m in made]
    assert_same_bits(*tensors)
    assert (ours.step_count, ours.skipped_steps) == (7, 1)


def test_data_parallel_over_a_world_of_one_takes_the_capturable_step():
    """comm= without shard_state: the summed gradients go to the capturable local step."""
    from fusedopt.distributed import SOLO

    made = [fo.ParamArena(params()), fo.ParamArena(params())]
    options = dict(lr=1e-2, max_grad_norm=0.5, nonfinite="skip")
    ours = fo.Adam(made[0], comm=SOLO, capturable=True, **options)
    theirs = fo.Adam(made[1], **options)
    for opt, arena in zip((ours, theirs), made, strict=True):
        run(opt, 6, arena, nan_at=(2,))
    assert_same_bits(made[0].params, made[1].params)
    assert (ours.step_count, ours.skipped_steps) == (5, 1)
