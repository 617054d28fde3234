"""Parity with torch.optim, for every rule and optimizer whose registry entry names a torch
equivalent (when torch is installed).

* The functional API over 25 steps, float32 and float64, Numba and the NumPy reference.
* The stateful optimizers over 50 steps with two groups and a schedule by epoch, on the
  list and arena paths, float64: agreement to 1e-10 relative (the two differ only in the
  order of operations).

The torch class and keywords come from the rule's ``torch_equivalent``; the test table
(rule_table.py) gives the hyperparameters, so a new rule with a torch equivalent is
checked here with no edit of this file.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from rule_table import OPTIMIZER_INFO, RULE_INFO, TORCH_EXTRA_CASES, optimizer_class

import fusedopt as fo
from fusedopt.kernels import RULES

torch = pytest.importorskip("torch",
                            reason="torch is not installed: pip install 'fusedopt[compare]'")

STEPS = 25
RTOL = {np.float32: 1e-5, np.float64: 1e-10}


@contextlib.contextmanager
def torch_default_dtype(dtype):
    """torch keeps scalar state (NAdam's mu product, step counts) in the default dtype."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def full_hyper(rule, hyper: dict) -> dict:
    """``hyper`` with every default filled in (what the rule's torch_equivalent reads)."""
    return {**rule.defaults, "grad_scale": 1.0, **hyper}


def torch_rules() -> list[str]:
    return [name for name, rule in RULES.items() if rule.torch_equivalent is not None
            and rule.torch_equivalent(full_hyper(rule, RULE_INFO[name].sample_hyper))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("rule_name", torch_rules())
def test_functional_update_matches_torch(rule_name, backend, dtype):
    rule = RULES[rule_name]
    hyper = {k: v for k, v in RULE_INFO[rule_name].sample_hyper.items() if k != "step"}
    cls, kwargs = rule.torch_equivalent(full_hyper(rule, hyper))
    update = fo.functional.FUNCTIONS[rule_name + "_"]
    rng = np.random.default_rng(11)
    p0 = rng.standard_normal((7, 5)).astype(dtype)
    grads = [rng.standard_normal((7, 5)).astype(dtype) for _ in range(STEPS)]
    ours = p0.copy()
    state = [np.zeros_like(ours) for _ in rule.state]
    with torch_default_dtype(dtype):
        tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        opt = getattr(torch.optim, cls)([tp], **kwargs)
        for t, g in enumerate(grads, start=1):
            tp.grad = torch.from_numpy(g.copy())
            opt.step()
            update(ours, g, *state, **({"step": t} if rule.needs_step else {}), **hyper,
                   backend=backend)
    np.testing.assert_allclose(ours, tp.detach().numpy(), rtol=RTOL[dtype], atol=RTOL[dtype])


def test_adam_matches_torch_fused_cpu_adam():
    """torch's fused CPU Adam (its fastest path) agrees as well as its reference path."""
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(1000).astype(np.float32)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.Adam([tp], lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=1e-2,
                           fused=True)
    ours, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(1000).astype(np.float32)
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        fo.adam_(ours, g, m, v, step=t, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-7,
                 weight_decay=1e-2)
    np.testing.assert_allclose(ours, tp.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_torch_cpu_tensors_are_updated_in_place_through_dlpack():
    """A torch CPU tensor is viewed without a copy (DLPack) and updated in place."""
    p = torch.ones(4)
    g = torch.full((4,), 0.5)
    m, v = torch.zeros(4), torch.zeros(4)
    fo.adam_(p, g, m, v, step=1, lr=0.1)
    np.testing.assert_allclose(p.numpy(), 0.9, rtol=1e-6)
    np.testing.assert_allclose(m.numpy(), 0.05, rtol=1e-6)


# ------------------------------------------- stateful optimizers: groups and a schedule
def stateful_cases() -> list[tuple[str, dict]]:
    cases = [(name, kwargs) for name, kwargs in OPTIMIZER_INFO.items()]
    return cases + TORCH_EXTRA_CASES


def _case_id(case) -> str:
    name, kwargs = case
    extra = [f"{k}={v}" for k, v in kwargs.items() if isinstance(v, bool)]
    return "-".join([name, *extra])


@pytest.mark.parametrize("use_arena", [False, True], ids=["list", "arena"])
@pytest.mark.parametrize("case", stateful_cases(), ids=_case_id)
def test_stateful_groups_and_schedule_match_torch_over_50_steps(case, use_arena):
    """Two groups (own lr and weight decay), an exponential schedule by epoch on one of
    them (10 steps an epoch), 50 steps, float64: agreement to 1e-10."""
    name, kwargs = case
    cls, switches = optimizer_class(name)
    rng = np.random.default_rng(5)
    shapes = [(6, 4), (4,), (3, 3)]
    initial = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(50)]

    first = fo.ParamArena(initial[:2]) if use_arena else [a.copy() for a in initial[:2]]
    second = fo.ParamArena(initial[2:]) if use_arena else [initial[2].copy()]
    opt = cls([{"params": first, "weight_decay": 0.05,
                "schedule": fo.schedules.exponential(0.02, base=0.9)},
               {"params": second, "lr": 0.003}], **switches, **kwargs)
    groups = []
    for group, lr in zip(opt.groups, (0.02, 0.003), strict=True):
        equivalent = group.rule.torch_equivalent and group.rule.torch_equivalent(
            opt._launch_hyper(group, lr, 1.0, 1))
        if not equivalent:
            pytest.skip(f"{name} {kwargs} has no torch.optim equivalent (its registry entry "
                        "names none)")
        groups.append(equivalent)
    assert groups[0][0] == groups[1][0]

    with torch_default_dtype(np.float64):
        tparams = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in initial]
        topt = getattr(torch.optim, groups[0][0])(
            [{"params": tparams[:2], **groups[0][1]}, {"params": tparams[2:], **groups[1][1]}])
        sched = torch.optim.lr_scheduler.LambdaLR(topt, [lambda e: 0.9 ** (e + 1),
                                                         lambda e: 1.0])
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
