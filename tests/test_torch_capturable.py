"""capturable=True: the step that reads nothing on the host (fusedopt.torch.capturable).

On this CPU the capturable step runs its CPU twin: the same scalars computed by torch
ops from the step counts, the same launch reading them (and GradScaler's found_inf) from
memory. The oracle is torch.optim (non-capturable, on the same data); "nothing read on
the host" is checked by making every tensor-to-Python conversion raise during the step.
The CUDA kernel is checked on the host in test_cuda_multi.py, and captured in a CUDA
graph in test_gpu_torch.py.
"""

from __future__ import annotations

import contextlib

import pytest

torch = pytest.importorskip("torch", reason="fusedopt.torch needs torch (pip install torch)")
from test_torch_optim import (  # noqa: E402
    assert_same,
    check_an_injected_inf_changes_nothing,
    check_grad_scaler,
    default_dtype,  # noqa: F401  (a fixture)
    groups,
    model,
    move_state_dict,
    train,
)

import fusedopt.torch as fot  # noqa: E402

CASES = [
    ("Adam", dict(lr=1e-2, weight_decay=0.01)),
    ("Adam", dict(lr=1e-2, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=1e-2, betas=(0.8, 0.95))),
    ("RMSprop", dict(lr=1e-3, weight_decay=0.01)),
    ("RMSprop", dict(lr=1e-3, momentum=0.5, centered=True, alpha=0.9)),
    ("NAdam", dict(lr=2e-3, weight_decay=0.01)),
    ("NAdam", dict(lr=2e-3, momentum_decay=0.01, weight_decay=0.01,
                   decoupled_weight_decay=True)),
]
CONVERSIONS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


@contextlib.contextmanager
def no_host_reads():
    """Every way a tensor's value reaches Python raises inside the block."""
    saved = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor's value was read on the host")

    try:
        for name in CONVERSIONS:
            setattr(torch.Tensor, name, refuse)
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def guarded(opt):
    """``opt`` whose step runs under :func:`no_host_reads` after its first (warm-up) step,
    as a CUDA graph captures the steps after a warm-up."""
    step, calls = opt.step, []

    def checked_step(closure=None):
        calls.append(1)
        if len(calls) == 1:
            return step(closure)
        with no_host_reads():
            return step(closure)
    opt.step = checked_step
    return opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name, kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_capturable_steps_match_torch_optim_and_read_nothing_on_the_host(name, kwargs, dtype,
                                                                         default_dtype):  # noqa: F811
    default_dtype(dtype)
    ours_net, theirs_net = model(dtype), model(dtype)
    ours = guarded(getattr(fot, name)(groups(ours_net, kwargs), capturable=True, **kwargs))
    theirs = getattr(torch.optim, name)(groups(theirs_net, kwargs), **kwargs)
    train(ours_net, ours, 30)
    train(theirs_net, theirs, 30)
    assert_same(ours_net, theirs_net, dtype)
    step = ours.state[next(ours_net.parameters())]["step"]
    assert step.dtype == torch.float32 and float(step) == 30


@pytest.mark.parametrize("name, kwargs", [CASES[0], CASES[2], CASES[4], CASES[5]])
def test_grad_scaler_skips_on_the_device(name, kwargs):
    """GradScaler's found_inf is read by the kernel, not the host: the steps with an inf
    change nothing (the step counts included), and the run equals torch's."""
    check_grad_scaler(name, kwargs, wrap=guarded, capturable=True)


def test_an_injected_inf_changes_nothing_not_even_the_step():
    check_an_injected_inf_changes_nothing(wrap=guarded, capturable=True)


def test_a_tensor_learning_rate_is_followed_without_being_read():
    """A schedule that changes a tensor ``lr`` in place (what a replayed graph sees) is
    followed at each step; the oracle sets torch's float lr to the same values."""
    ours_net, theirs_net = model(torch.float32), model(torch.float32)
    lr = torch.tensor(1e-2)
    ours = guarded(fot.AdamW(ours_net.parameters(), lr=lr, capturable=True))
    theirs = torch.optim.AdamW(theirs_net.parameters(), lr=1e-2)
    generator = [torch.Generator().manual_seed(3) for _ in range(2)]
    for _ in range(12):
        for net, opt, g in ((ours_net, ours, generator[0]), (theirs_net, theirs, generator[1])):
            x, y = torch.randn(32, 6, generator=g), torch.randn(32, 3, generator=g)
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
        lr.mul_(0.8)
        theirs.param_groups[0]["lr"] *= 0.8
    assert_same(ours_net, theirs_net, torch.float32)


@pytest.mark.parametrize("name, kwargs", [("Adam", dict(lr=1e-2, amsgrad=True)),
                                          ("NAdam", dict(lr=2e-3, momentum_decay=0.01))],
                         ids=["Adam", "NAdam"])
@pytest.mark.parametrize("direction", ["torch_to_fusedopt", "fusedopt_to_torch"])
def test_state_dicts_move_both_ways(direction, name, kwargs, default_dtype):  # noqa: F811
    """The step counts (and NAdam's mu_product) live on the parameters' device; a
    checkpoint moves to and from torch.optim and training goes on as twenty unbroken
    steps of torch."""
    default_dtype(torch.float64)
    net, resumed, unbroken_net, unbroken = move_state_dict(name, kwargs, direction,
                                                           capturable=True)
    assert_same(net, unbroken_net, torch.float64)
    for p, q in zip(net.parameters(), unbroken_net.parameters(), strict=True):
        for key, value in unbroken.state[q].items():
            torch.testing.assert_close(resumed.state[p][key].cpu(), value.cpu(),  # steps:
                                       rtol=1e-10, atol=0, check_dtype=False)  # float32 here


def test_lion_capturable_equals_lion():
    """torch has no Lion: the oracle is fusedopt's own host-scalar step."""
    nets = model(torch.float32), model(torch.float32)
    opts = (guarded(fot.Lion(nets[0].parameters(), lr=1e-3, weight_decay=0.1, capturable=True)),
            fot.Lion(nets[1].parameters(), lr=1e-3, weight_decay=0.1))
    for net, opt in zip(nets, opts, strict=True):
        train(net, opt, 10)
    assert_same(*nets, torch.float32)


def test_what_a_capturable_step_cannot_do_is_refused_when_built(monkeypatch):
    import dataclasses

    from fusedopt.kernels import RULES

    params = [torch.nn.Parameter(torch.zeros(3))]
    # every built-in rule computes its scalars on the device; a rule that could not
    monkeypatch.setitem(RULES, "nadam", dataclasses.replace(RULES["nadam"],
                                                            device_scalars=False))
    with pytest.raises(ValueError, match="capturable=True is not supported with the rule "
                                         "'nadam'"):
        fot.NAdam(params, capturable=True)
    with pytest.raises(ValueError, match="capturable=True cannot round stochastically"):
        fot.Adam(params, capturable=True, stochastic_rounding=True)
    opt = fot.Adam(params, capturable=True)
    with pytest.raises(ValueError, match="cannot round stochastically"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))],
                             "stochastic_rounding": True})
    assert len(opt.param_groups) == 1



@pytest.mark.parametrize("master_weights", [False, True])
def test_bf16_parameters_take_the_same_bits_as_the_host_step(master_weights):
    """bf16 parameters (float32 master copies or not), nearest rounding: the capturable
    step stores the bits of fusedopt's host-scalar step."""
    nets = model(torch.bfloat16), model(torch.bfloat16)
    opts = [fot.AdamW(net.parameters(), lr=1e-2, master_weights=master_weights,
                      capturable=capturable) for net, capturable in zip(nets, (True, False),
                                                                        strict=True)]
    for net, opt in zip(nets, opts, strict=True):
        train(net, opt, 8)
    for p, q in zip(*(net.parameters() for net in nets), strict=True):
        assert torch.equal(p, q)
    if master_weights:
        state = opts[0].state[next(nets[0].parameters())]
        assert state["master"].dtype == torch.float32


@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "grad-scaler"])
def test_parameters_at_different_steps_share_one_launch(scaled):
    """Parameters without a gradient in some steps fall behind: one bucket, one launch, each
    tensor's bias correction from its own device count (row t of the scalars); with
    GradScaler, an inf at step 4 holds back only the counts of that step's members."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5)) for _ in range(4)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opts = fot.Adam(ours, lr=0.1, capturable=True), torch.optim.Adam(theirs, lr=0.1)
    scalers = [torch.amp.GradScaler("cpu", init_scale=4.0) if scaled else None
               for _ in range(2)]
    for t in range(8):
        for params, opt, scaler in zip((ours, theirs), opts, scalers, strict=True):
            opt.zero_grad()
            loss = sum(((k + 1) * (t + 1) * p).sum() for k, p in enumerate(params) if (t + k) % 3)
            (loss if scaler is None else scaler.scale(loss)).backward()
            if scaled and t == 4:
                params[1].grad[0] = float("inf")
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
                scaler.update()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
        assert float(opts[0].state[p]["step"]) == float(opts[1].state[q]["step"])
    assert len({float(opts[0].state[p]["step"]) for p in ours}) == 2  # really apart
