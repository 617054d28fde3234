"""Parity with torch.optim over 25 steps, on the same gradients (when torch is installed).

float64 agreement is to 1e-10 relative (the two differ only in the order of
operations); float32 to 1e-5 of the parameter scale over 25 steps.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt as fo

torch = pytest.importorskip("torch",
                            reason="torch is not installed: pip install 'fusedopt[compare]'")

STEPS = 25
RTOL = {np.float32: 1e-5, np.float64: 1e-10}


def run_pair(make_torch, fused_step, n_state, dtype, backend, lr_values=None):
    rng = np.random.default_rng(11)
    p0 = rng.standard_normal((7, 5)).astype(dtype)
    grads = [rng.standard_normal((7, 5)).astype(dtype) for _ in range(STEPS)]
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = make_torch([tp])
    ours = p0.copy()
    state = [np.zeros_like(ours) for _ in range(n_state)]
    for t, g in enumerate(grads, start=1):
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        fused_step(ours, g, state, t, backend)
    expected = tp.detach().numpy()
    np.testing.assert_allclose(ours, expected, rtol=RTOL[dtype], atol=RTOL[dtype])


DTYPES = [np.float32, np.float64]
BACKENDS = ["numba", "numpy"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_torch(dtype, backend, nesterov):
    run_pair(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.0,
                                        nesterov=nesterov, weight_decay=1e-3),
             lambda p, g, s, t, b: fo.momentum_(p, g, s[0], lr=0.05, beta=0.9, dampening=0.0,
                                                nesterov=nesterov, weight_decay=1e-3, backend=b),
             1, dtype, backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_matches_torch(dtype, backend):
    run_pair(lambda ps: torch.optim.SGD(ps, lr=0.05, weight_decay=1e-2),
             lambda p, g, s, t, b: fo.sgd_(p, g, lr=0.05, weight_decay=1e-2, backend=b),
             0, dtype, backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rmsprop_matches_torch(dtype, backend):
    run_pair(lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.95, eps=1e-6, weight_decay=1e-3),
             lambda p, g, s, t, b: fo.rmsprop_(p, g, s[0], lr=0.01, beta=0.95, eps=1e-6,
                                               weight_decay=1e-3, backend=b),
             1, dtype, backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [False, True])
def test_adam_matches_torch(dtype, backend, fused):
    run_pair(lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-7,
                                         weight_decay=1e-2, fused=fused),
             lambda p, g, s, t, b: fo.adam_(p, g, s[0], s[1], step=t, lr=0.01, beta1=0.8,
                                            beta2=0.99, eps=1e-7, weight_decay=1e-2, backend=b),
             2, dtype, backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_matches_torch(dtype, backend):
    run_pair(lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
             lambda p, g, s, t, b: fo.adamw_(p, g, s[0], s[1], step=t, lr=0.01,
                                             weight_decay=0.1, backend=b),
             2, dtype, backend)


def test_torch_cpu_tensors_are_updated_in_place_through_dlpack():
    """A torch CPU tensor is viewed without a copy (DLPack) and updated in place."""
    p = torch.ones(4)
    g = torch.full((4,), 0.5)
    m, v = torch.zeros(4), torch.zeros(4)
    fo.adam_(p, g, m, v, step=1, lr=0.1)
    np.testing.assert_allclose(p.numpy(), 0.9, rtol=1e-6)
    np.testing.assert_allclose(m.numpy(), 0.05, rtol=1e-6)


# ------------------------------------------- stateful optimizers: groups and a schedule
STATEFUL = {
    # name: (ours, torch class, our kwargs, torch kwargs)
    "Adam": (fo.Adam, "Adam", dict(beta1=0.8, beta2=0.99, eps=1e-7),
             dict(betas=(0.8, 0.99), eps=1e-7)),
    "AdamW": (fo.AdamW, "AdamW", dict(), dict()),
    "Momentum": (fo.Momentum, "SGD", dict(beta=0.9, dampening=0.0, nesterov=True),
                 dict(momentum=0.9, dampening=0.0, nesterov=True)),
    "RMSprop": (fo.RMSprop, "RMSprop", dict(beta=0.95, eps=1e-6), dict(alpha=0.95, eps=1e-6)),
}


@pytest.mark.parametrize("use_arena", [False, True], ids=["list", "arena"])
@pytest.mark.parametrize("name", list(STATEFUL))
def test_stateful_groups_and_schedule_match_torch_over_50_steps(name, use_arena):
    """Two groups (own lr and weight decay), an exponential schedule by epoch on one of
    them (10 steps an epoch), 50 steps, float64: agreement to 1e-10."""
    ours_cls, torch_name, ours_kw, torch_kw = STATEFUL[name]
    rng = np.random.default_rng(5)
    shapes = [(6, 4), (4,), (3, 3)]
    initial = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(50)]
    wd = 0.05 if name == "AdamW" else 0.01

    first = fo.ParamArena(initial[:2]) if use_arena else [a.copy() for a in initial[:2]]
    second = fo.ParamArena(initial[2:]) if use_arena else [initial[2].copy()]
    opt = ours_cls([{"params": first, "weight_decay": wd,
                     "schedule": fo.schedules.exponential(0.02, base=0.9)},
                    {"params": second, "lr": 0.003}], lr=0.01, **ours_kw)

    tparams = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in initial]
    topt = getattr(torch.optim, torch_name)(
        [{"params": tparams[:2], "lr": 0.02, "weight_decay": wd},
         {"params": tparams[2:], "lr": 0.003, "weight_decay": 0.0 if name != "AdamW" else 0.01}],
        **torch_kw)
    sched = torch.optim.lr_scheduler.LambdaLR(topt, [lambda e: 0.9 ** (e + 1), lambda e: 1.0])

    for t, g in enumerate(grads, start=1):
        for p, x in zip(tparams, g, strict=True):
            p.grad = torch.from_numpy(x.copy())
        topt.step()
        if use_arena:
            for arena, part in ((first, g[:2]), (second, g[2:])):
                for view, x in zip(arena.grads, part, strict=True):
                    view[...] = x
            opt.step()
        else:
            opt.step(g)
        if t % 10 == 0:
            sched.step()
            opt.next_epoch()
    ours = (first.params + second.params) if use_arena else (first + second)
    for a, p in zip(ours, tparams, strict=True):
        np.testing.assert_allclose(a, p.detach().numpy(), rtol=1e-10, atol=1e-12)
