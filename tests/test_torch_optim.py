"""fusedopt.torch against torch.optim: the same trajectories, checkpoints, errors and AMP.

The oracle is torch.optim itself (its default single-tensor/foreach path): each test
trains two copies of one model, one with torch's optimizer and one with fusedopt's,
through the same loop (two param groups, a StepLR schedule, 50 steps), and compares
the parameters. float64 to 1e-10, float32 to 1e-6 (relative, with an absolute floor
of 1e-6 for parameters near zero).
"""

from __future__ import annotations

import copy
import re

import pytest

torch = pytest.importorskip("torch", reason="fusedopt.torch needs torch (pip install torch)")
import fusedopt.torch as fot  # noqa: E402

#: (fusedopt class, torch class, keywords): every formula the drop-ins cover
CASES = [
    ("Adam", dict(lr=1e-2, weight_decay=0.01)),
    ("Adam", dict(lr=1e-2, amsgrad=True, maximize=True)),
    ("Adam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, amsgrad=True, betas=(0.8, 0.95))),
    ("SGD", dict(lr=1e-2, weight_decay=0.01)),
    ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=1e-2, momentum=0.9, dampening=0.3, weight_decay=0.01, maximize=True)),
    ("RMSprop", dict(lr=1e-3, weight_decay=0.01)),
    ("RMSprop", dict(lr=1e-3, momentum=0.9)),
    ("RMSprop", dict(lr=1e-3, centered=True)),
    ("RMSprop", dict(lr=1e-3, momentum=0.5, centered=True, alpha=0.9)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.01)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True)),
]
TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-10}


@pytest.fixture
def default_dtype():
    """torch keeps step and mu_product in the default dtype: float64 runs need it float64."""
    before = torch.get_default_dtype()
    yield lambda dtype: torch.set_default_dtype(dtype)
    torch.set_default_dtype(before)


def model(dtype, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    return net.to(dtype)


def groups(net, kwargs):
    """Two param groups: the first layer at half the learning rate."""
    return [{"params": net[0].parameters(), "lr": kwargs.get("lr", 1e-3) / 2},
            {"params": net[2].parameters()}]


def train(net, opt, steps, seed=1, scheduler=None, scaler=None, inf_at=()):
    generator = torch.Generator().manual_seed(seed)
    dtype = next(net.parameters()).dtype
    for t in range(steps):
        x = torch.randn(32, 6, generator=generator, dtype=torch.float64).to(dtype)
        y = torch.randn(32, 3, generator=generator, dtype=torch.float64).to(dtype)
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        if scaler is None:
            loss.backward()
            if t in inf_at:
                next(net.parameters()).grad[0] = float("inf")
            opt.step()
        else:
            scaler.scale(loss).backward()
            if t in inf_at:
                next(net.parameters()).grad[0] = float("inf")
            scaler.step(opt)
            scaler.update()
        if scheduler is not None:
            scheduler.step()


def assert_same(a, b, dtype):
    tol = TOLERANCE[dtype]
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name, kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_fifty_steps_match_torch_optim(name, kwargs, dtype, default_dtype):
    default_dtype(dtype)
    ours_net, theirs_net = model(dtype), model(dtype)
    ours = getattr(fot, name)(groups(ours_net, kwargs), **kwargs)
    theirs = getattr(torch.optim, name)(groups(theirs_net, kwargs), **kwargs)
    schedules = [torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5)
                 for o in (ours, theirs)]
    train(ours_net, ours, 50, scheduler=schedules[0])
    train(theirs_net, theirs, 50, scheduler=schedules[1])
    assert_same(ours_net, theirs_net, dtype)
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]  # the schedule ran
    for p, q in zip(ours_net.parameters(), theirs_net.parameters(), strict=True):
        ours_state, theirs_state = ours.state[p], theirs.state[q]
        for key, value in theirs_state.items():
            if isinstance(value, torch.Tensor):
                tol = TOLERANCE[dtype] * 10
                torch.testing.assert_close(ours_state[key].to(value.dtype), value, rtol=tol,
                                           atol=tol, msg=lambda m, k=key: f"state {k}: {m}")


def check_grad_scaler(name, kwargs, wrap=lambda opt: opt, **extra):
    """GradScaler with two injected infs: the same scale and trajectory as torch.optim's,
    and two steps skipped. ``wrap`` and ``extra`` are for fusedopt's optimizer."""
    ours_net, theirs_net = model(torch.float32), model(torch.float32)
    ours = wrap(getattr(fot, name)(ours_net.parameters(), **kwargs, **extra))
    theirs = getattr(torch.optim, name)(theirs_net.parameters(), **kwargs)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=5)
               for _ in range(2)]
    train(ours_net, ours, 20, scaler=scalers[0], inf_at=(3, 11))
    train(theirs_net, theirs, 20, scaler=scalers[1], inf_at=(3, 11))
    assert scalers[0].get_scale() == scalers[1].get_scale()
    assert_same(ours_net, theirs_net, torch.float32)
    if "step" in theirs.state[next(theirs_net.parameters())]:
        assert float(ours.state[next(ours_net.parameters())]["step"]) == 18  # two skipped


def check_an_injected_inf_changes_nothing(wrap=lambda opt: opt, **extra):
    net = model(torch.float32)
    opt = wrap(fot.Adam(net.parameters(), lr=1e-2, **extra))
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    train(net, opt, 2, scaler=scaler)
    before = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    train(net, opt, 1, scaler=scaler, inf_at=(0,))
    assert scaler.get_scale() == 128.0
    for key, value in before[0].items():
        assert torch.equal(net.state_dict()[key], value)
    after = opt.state_dict()["state"]
    for index, state in before[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(after[index][key], value), key


@pytest.mark.parametrize("name, kwargs", [CASES[0], CASES[3], CASES[6], CASES[12]])
def test_grad_scaler_unscales_in_the_step_and_skips_an_inf(name, kwargs):
    """torch.amp.GradScaler hands the step its scale and found_inf (the fused contract):
    the step with an inf is skipped, the scale halves, and the trajectories agree."""
    check_grad_scaler(name, kwargs)


def test_an_injected_inf_changes_nothing():
    check_an_injected_inf_changes_nothing()


@pytest.mark.parametrize("name, kwargs", [CASES[1], CASES[4], CASES[7], CASES[11], CASES[13]])
@pytest.mark.parametrize("direction", ["torch_to_fusedopt", "fusedopt_to_torch"])
def test_state_dicts_move_both_ways_and_training_goes_on(name, kwargs, direction,
                                                         default_dtype):
    """Ten steps with one, its state_dict loaded into the other, ten more: the same as
    twenty unbroken steps of torch on the same data."""
    default_dtype(torch.float64)  # torch's float64 step and mu_product
    net, _, unbroken_net, _ = move_state_dict(name, kwargs, direction)
    for p, q in zip(net.parameters(), unbroken_net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10)


def move_state_dict(name, kwargs, direction, capturable=False):
    """Ten float64 steps with one of torch.optim and fusedopt.torch (``capturable=`` on
    fusedopt's), its state_dict loaded into the other, ten more; and twenty unbroken
    steps of torch on the same data: ``(net, resumed, unbroken_net, unbroken)``."""
    def make(library, net):
        extra = dict(capturable=True) if capturable and library is fot else {}
        return getattr(library, name)(net.parameters(), **kwargs, **extra)
    first, second = ((torch.optim, fot) if direction == "torch_to_fusedopt"
                     else (fot, torch.optim))
    net = model(torch.float64)
    opt = make(first, net)
    train(net, opt, 10, seed=1)
    saved = copy.deepcopy(opt.state_dict())
    if second is torch.optim:  # a group's capturable=True would be loaded too, and torch
        for group in saved["param_groups"]:  # refuses it on a CPU
            group["capturable"] = False
    resumed = make(second, net)
    resumed.load_state_dict(saved)
    train(net, resumed, 10, seed=2)
    unbroken_net = model(torch.float64)
    unbroken = getattr(torch.optim, name)(unbroken_net.parameters(), **kwargs)
    train(unbroken_net, unbroken, 10, seed=1)
    train(unbroken_net, unbroken, 10, seed=2)
    return net, resumed, unbroken_net, unbroken


@pytest.mark.parametrize("name, kwargs, match", [
    ("Adam", dict(lr=-1.0), "Invalid learning rate"),
    ("Adam", dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0"),
    ("AdamW", dict(eps=-1e-8), "Invalid epsilon value"),
    ("SGD", dict(lr=0.1, nesterov=True), "Nesterov momentum requires"),
    ("SGD", dict(lr=0.1, momentum=-0.5), "Invalid momentum value"),
    ("RMSprop", dict(alpha=-0.1), "Invalid alpha value"),
    ("NAdam", dict(momentum_decay=-1.0), "Invalid momentum_decay value"),
])
def test_bad_values_get_torchs_own_errors(name, kwargs, match):
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match=match) as theirs:
        getattr(torch.optim, name)(params, **kwargs)
    with pytest.raises(ValueError, match=re.escape(str(theirs.value))):
        getattr(fot, name)(params, **kwargs)


def test_implementation_flags_are_accepted_or_refused_by_name():
    params = [torch.nn.Parameter(torch.zeros(3))]
    fot.Adam(params, foreach=True)
    fot.Adam(params, fused=True)
    fot.SGD(params, lr=0.1, foreach=False, fused=None)
    with pytest.raises(ValueError, match="differentiable=True is not supported"):
        fot.Adam(params, differentiable=True)
    fot.AdamW(params, capturable=True)
    fot.NAdam(params, capturable=True)  # every rule computes its scalars on the device
    with pytest.raises(TypeError, match="capturable must be True or False"):
        fot.Adam(params, capturable="yes")
    with pytest.raises(TypeError, match="foreach must be None, True or False"):
        fot.NAdam(params, foreach="yes")
    with pytest.raises(ValueError, match="state_dtype='float16'"):
        fot.Adam(params, state_dtype="float16")


def test_bad_gradients_are_refused_before_any_write():
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4, 2))
    opt = fot.Adam([a, b], lr=0.1)
    a.grad = torch.ones(4)
    b.grad = torch.ones(2, 4).t()
    with pytest.raises(ValueError, match=r"parameter 1 .*must be contiguous"):
        opt.step()
    assert torch.equal(a, torch.ones(4)) and not opt.state[a]
    b.grad = torch.ones(4, 2).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert torch.equal(a, torch.ones(4))
    b.grad = torch.ones(4, 2)
    opt.step()
    assert not torch.equal(a, torch.ones(4))


def test_closure_hooks_zero_grad_and_tensor_lr():
    net = model(torch.float32)
    opt = fot.SGD(net.parameters(), lr=torch.tensor(0.01), momentum=0.9)
    calls = []
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    x = torch.randn(4, 6)

    def closure():
        opt.zero_grad()
        loss = net(x).pow(2).sum()
        loss.backward()
        return loss

    first = opt.step(closure)
    second = opt.step(closure)
    assert calls == ["post", "post"] and second < first
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_state_that_does_not_fit_its_parameter_is_refused_before_any_write():
    """State is the caller's too: another size (a checkpoint of another model), another
    dtype than the rest, or a changed state_dtype must not send the kernel past memory."""
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(6))
    opt = fot.Adam([a, b], lr=0.1)
    a.grad, b.grad = torch.ones(4), torch.ones(6)
    opt.step()
    before = a.detach().clone(), b.detach().clone()
    exp_avg = opt.state[b]["exp_avg"]
    opt.state[b]["exp_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"state\['exp_avg'\] of parameter 1 .*nothing was"):
        opt.step()
    # Another dtype at the checked tensor's address and size (as a fresh tensor gets when
    # the allocator reuses freed memory): the step's memo of its checks must not pass it.
    opt.state[b]["exp_avg"] = exp_avg.view(torch.bfloat16)[:6]  # its exp_avg_sq: float32
    with pytest.raises(ValueError, match=r"state\['exp_avg_sq'\] of parameter 1 .* while the "
                                         r"rest of its state is torch.bfloat16"):
        opt.step()
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])
    opt.state[b]["exp_avg"] = torch.zeros(6)
    opt.param_groups[0]["state_dtype"] = "bfloat16"  # the tensors say float32: they win
    opt.step()
    assert opt.state[a]["exp_avg"].dtype == torch.float32


def test_switching_momentum_on_makes_its_buffer():
    p = torch.nn.Parameter(torch.ones(5))
    opt = fot.SGD([p], lr=0.1)
    p.grad = torch.ones(5)
    opt.step()
    opt.param_groups[0]["momentum"] = 0.9
    opt.step()
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], torch.ones(5))


def test_what_torch_allows_but_the_rule_cannot_take_is_refused_when_the_group_is_added():
    """eps=0 divides 0 by 0 for a zero gradient in fusedopt's formulation; torch accepts it.
    It is refused at construction (or add_param_group), naming it, not at the first step."""
    params = [torch.nn.Parameter(torch.zeros(3))]
    torch.optim.Adam(params, eps=0.0)  # torch accepts it
    with pytest.raises(ValueError, match=r"eps=0\.0 is out of range"):
        fot.Adam(params, eps=0.0)
    opt = fot.Adam(params, lr=1e-3)
    with pytest.raises(ValueError, match=r"eps=0\.0"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "eps": 0.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.5})
    assert opt.param_groups[1]["state_dtype"] is None and opt.param_groups[1]["lr"] == 0.5
