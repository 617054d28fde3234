"""fusedopt.torch with 16-bit parameters, master weights and stochastic rounding, and its
two routes (one compiled call per bucket on the CPU; one kernel per tensor, the CUDA
route, run here on the CPU) agreeing bit for bit."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch", reason="fusedopt.torch needs torch (pip install torch)")
import fusedopt.torch as fot  # noqa: E402


def model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3))
    return net.to(dtype)


def loss_of(net, generator):
    dtype = next(net.parameters()).dtype
    x = torch.randn(64, 6, generator=generator).to(dtype)
    y = x[:, :3].sin()
    return ((net(x) - y).float() ** 2).mean()


def train(net, opt, steps, seed=1):
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of(net, generator)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("name, kwargs, dtype", [
    ("Adam", dict(lr=1e-2), torch.float32),
    ("AdamW", dict(lr=1e-2, amsgrad=True), torch.float64),
    ("SGD", dict(lr=1e-2, momentum=0.9, dampening=0.1), torch.float32),
    ("RMSprop", dict(lr=1e-3, momentum=0.9, centered=True), torch.float32),
    ("NAdam", dict(lr=1e-2), torch.float32),
    ("Lion", dict(lr=1e-3, weight_decay=0.1), torch.float32),
    ("Adam", dict(lr=1e-2, stochastic_rounding=True, seed=3), torch.bfloat16),
    ("Adam", dict(lr=1e-2, master_weights=True, state_dtype="float32"), torch.float16),
    ("AdamW", dict(lr=1e-2, master_weights=True, stochastic_rounding=True,
                   state_dtype="bfloat16", seed=9), torch.bfloat16),
    ("SGD", dict(lr=1e-2, momentum=0.9, stochastic_rounding=True), torch.bfloat16),
])
def test_the_cuda_route_equals_the_compiled_list_bit_for_bit(name, kwargs, dtype,
                                                             monkeypatch):
    nets = [model(dtype), model(dtype)]
    opts = [getattr(fot, name)(n.parameters(), **kwargs) for n in nets]
    monkeypatch.setattr(opts[1], "_per_tensor", True)
    train(nets[0], opts[0], 8)
    train(nets[1], opts[1], 8)
    for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(p, q)
        for key, value in opts[0].state[p].items():
            assert torch.equal(value, opts[1].state[q][key]), key


def ulp_bf16(x: torch.Tensor) -> torch.Tensor:
    bits = x.float().abs().view(torch.int32) & 0x7F800000
    return torch.maximum(bits.view(torch.float32) * 2.0**-7, torch.tensor(2.0**-133))


def test_bf16_adam_steps_within_one_ulp_of_torch_fused():
    """Each of 20 steps from the same bf16 state (state in bf16, as torch keeps it): our
    parameters within one bf16 ulp of torch.optim.Adam(fused=True)'s."""
    ours_net, theirs_net = model(torch.bfloat16), model(torch.bfloat16)
    ours = fot.Adam(ours_net.parameters(), lr=1e-2, weight_decay=0.01)
    theirs = torch.optim.Adam(theirs_net.parameters(), lr=1e-2, weight_decay=0.01, fused=True)
    generator = torch.Generator().manual_seed(5)
    for _ in range(20):
        ours_net.load_state_dict(theirs_net.state_dict())
        if theirs.state:
            ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
        ours.zero_grad()
        theirs.zero_grad()
        loss_of(theirs_net, generator).backward()
        for p, q in zip(ours_net.parameters(), theirs_net.parameters(), strict=True):
            p.grad = q.grad.clone()
        ours.step()
        theirs.step()
        for p, q in zip(ours_net.parameters(), theirs_net.parameters(), strict=True):
            assert ((p.float() - q.float()).abs() <= ulp_bf16(q)).all()


def test_bf16_with_master_weights_and_stochastic_rounding_trains_and_resumes_exactly():
    net = model(torch.bfloat16)
    opt = fot.AdamW(net.parameters(), lr=1e-2, master_weights=True, stochastic_rounding=True,
                    state_dtype="bfloat16", seed=11)
    losses = train(net, opt, 60)
    assert losses[-1] < 0.5 * losses[0]
    state = opt.state[next(net.parameters())]
    assert state["master"].dtype == torch.float32 and state["exp_avg"].dtype == torch.bfloat16
    # a checkpoint, resumed by a fresh optimizer: bit-identical to the unbroken run
    saved, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(net.state_dict())
    train(net, opt, 5, seed=2)
    again = model(torch.bfloat16)
    again.load_state_dict(weights)
    resumed = fot.AdamW(again.parameters(), lr=1e-2, master_weights=True,
                        stochastic_rounding=True, state_dtype="bfloat16", seed=0)
    resumed.load_state_dict(saved)  # the seed comes from the checkpoint's param groups
    train(again, resumed, 5, seed=2)
    for p, q in zip(net.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_dtype_survives_a_torch_checkpoint():
    """torch.optim casts loaded state to the parameter's dtype; fusedopt casts it back to the
    group's state dtype."""
    net = model(torch.float32)
    opt = fot.Adam(net.parameters(), lr=1e-2, state_dtype="bfloat16")
    train(net, opt, 3)
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for state in opt.state.values():
        assert state["exp_avg"].dtype == torch.bfloat16
    theirs = torch.optim.Adam(model(torch.float32).parameters(), lr=1e-2)
    train(model(torch.float32), theirs, 1)
    opt.load_state_dict(theirs.state_dict())  # no state_dtype key: the defaults fill it in
    assert opt.param_groups[0]["state_dtype"] == "bfloat16"
