"""fusedopt.torch's step runs torch.optim's step hooks as torch runs them, and shows in a
profiler under torch's name for it; the oracle is torch.optim.Adam given the same hooks
and the same profiler."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="fusedopt.torch needs torch (pip install torch)")
from torch.optim.optimizer import (  # noqa: E402
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import fusedopt.torch as fot  # noqa: E402


def model():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def calls_seen(make):
    """What the hooks of an optimizer saw, in order, over two steps (the second one with a
    closure a pre-hook swaps for its own)."""
    seen = []
    opt = make(model())
    handles = [
        register_optimizer_step_pre_hook(
            lambda o, a, k: seen.append(("global pre", len(a), sorted(k)))),
        opt.register_step_pre_hook(lambda o, a, k: seen.append(("pre", len(a), sorted(k)))),
        opt.register_step_pre_hook(
            lambda o, a, k: ((o, lambda: seen.append("swapped closure") or 1.0), {})
            if len(a) > 1 else None),
        opt.register_step_post_hook(lambda o, a, k: seen.append(("post", len(a), sorted(k)))),
        register_optimizer_step_post_hook(
            lambda o, a, k: seen.append(("global post", len(a), sorted(k)))),
    ]
    try:
        opt.step()
        loss = opt.step(lambda: seen.append("closure") or 2.0)
    finally:
        for handle in handles:
            handle.remove()
    return seen, loss


def test_the_step_hooks_run_as_torch_runs_them():
    ours = calls_seen(lambda p: fot.Adam(p, lr=0.1))
    theirs = calls_seen(lambda p: torch.optim.Adam(p, lr=0.1))
    assert ours == theirs
    assert ours[1] == 1.0 and "swapped closure" in ours[0]  # the pre-hook's arguments ran


def test_a_pre_hook_returning_something_else_is_refused_as_torch_refuses_it():
    for make in (fot.Adam, torch.optim.Adam):
        opt = make(model(), lr=0.1)
        opt.register_step_pre_hook(lambda o, a, k: "not a pair")
        with pytest.raises(RuntimeError, match="must return None or a tuple"):
            opt.step()


def test_torch_does_not_wrap_the_step_again():
    fot.SGD(model(), lr=0.1)
    fot.Adam(model(), lr=0.1)
    assert fot.Adam.step.hooked and fot.Adam.step is fot.SGD.step
    assert not hasattr(fot.Adam.step.__wrapped__, "hooked")  # ours, over torch.no_grad


def test_a_profiler_sees_the_step_under_torchs_name():
    names = {}
    for make in (fot.Adam, torch.optim.Adam):
        opt = make(model(), lr=0.1)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            opt.step()
        names[make.__module__] = {e.name for e in prof.events()}
    assert "Optimizer.step#Adam.step" in names["fusedopt.torch.optimizers"]
    assert "Optimizer.step#Adam.step" in names["torch.optim.adam"]
