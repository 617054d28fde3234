"""fusedopt.torch on CUDA tensors: the same trajectories as torch.optim on the GPU, and as
fusedopt.torch on the CPU (the kernels round as the CPU drivers do). These run on a GPU
machine (bench/gpu_check.sh)."""

from __future__ import annotations

import copy

import pytest
from conftest import HAS_GPU

torch = pytest.importorskip("torch", reason="fusedopt.torch needs torch")
pytestmark = pytest.mark.skipif(
    not (HAS_GPU and torch.cuda.is_available()),
    reason="no CUDA device here (these run on a GPU machine: bench/gpu_check.sh)")

import fusedopt.torch as fot  # noqa: E402

CASES = [("Adam", dict(lr=1e-2, weight_decay=0.01)), ("AdamW", dict(lr=1e-2, amsgrad=True)),
         ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True)),
         ("RMSprop", dict(lr=1e-3, momentum=0.5, centered=True)), ("NAdam", dict(lr=1e-2))]


def model(device, dtype=torch.float32):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3))
    return net.to(device=device, dtype=dtype)


def train(net, opt, steps, scaler=None, inf_at=()):
    generator = torch.Generator().manual_seed(1)
    p0 = next(net.parameters())
    for t in range(steps):
        x = torch.randn(32, 6, generator=generator).to(p0.device, p0.dtype)
        opt.zero_grad()
        loss = ((net(x) - x[:, :3].sin()) ** 2).float().mean()
        (loss if scaler is None else scaler.scale(loss)).backward()
        if t in inf_at:
            p0.grad[0] = float("inf")
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()


def step_with_shared_grads(nets, opts, steps):
    """Gradients from the first (CPU) network, copied to every other: the matrix products
    of the forward pass differ between devices, the updates must not."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(32, 6, generator=generator).to(next(nets[0].parameters()).dtype)
        for opt in opts:
            opt.zero_grad()
        ((nets[0](x) - x[:, :3].sin()) ** 2).float().mean().backward()
        for net in nets[1:]:
            for p, q in zip(net.parameters(), nets[0].parameters(), strict=True):
                p.grad = q.grad.to(p.device)
        for opt in opts:
            opt.step()


@pytest.mark.parametrize("name, kwargs", CASES)
def test_cuda_matches_torch_optim_and_the_cpu(name, kwargs):
    nets = [model("cpu"), model("cuda"), model("cuda")]
    opts = [getattr(fot, name)(nets[0].parameters(), **kwargs),
            getattr(fot, name)(nets[1].parameters(), **kwargs),
            getattr(torch.optim, name)(nets[2].parameters(), **kwargs)]
    step_with_shared_grads(nets, opts, 30)
    for cpu, ours, theirs in zip(*(n.parameters() for n in nets), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        assert torch.equal(ours.cpu(), cpu), "the GPU and the CPU store different bits"


def test_grad_scaler_on_cuda_skips_the_inf_step():
    nets = [model("cuda"), model("cuda")]
    opts = [fot.Adam(nets[0].parameters(), lr=1e-2),
            torch.optim.Adam(nets[1].parameters(), lr=1e-2, fused=True)]
    scalers = [torch.amp.GradScaler("cuda", init_scale=2.0**12) for _ in opts]
    for net, opt, scaler in zip(nets, opts, scalers, strict=True):
        train(net, opt, 12, scaler=scaler, inf_at=(4,))
    assert scalers[0].get_scale() == scalers[1].get_scale()
    for p, q in zip(*(n.parameters() for n in nets), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


def test_bf16_master_weights_with_stochastic_rounding_on_cuda_match_the_cpu():
    nets = [model("cpu", torch.bfloat16), model("cuda", torch.bfloat16)]
    opts = [fot.AdamW(n.parameters(), lr=1e-2, master_weights=True, stochastic_rounding=True,
                      seed=4) for n in nets]
    step_with_shared_grads(nets, opts, 10)
    for cpu, gpu in zip(*(n.parameters() for n in nets), strict=True):
        assert torch.equal(gpu.cpu(), cpu)
    saved = copy.deepcopy(opts[1].state_dict())
    assert saved["state"][0]["master"].dtype == torch.float32


@pytest.mark.parametrize("name", ["Adam", "NAdam"])
def test_a_capturable_step_replays_in_a_cuda_graph(name):
    """capturable=True: the step (scalars from the device step counts, the launch, the
    counts' advance) captured once in a CUDA graph after warm-up steps on a side stream,
    then replayed; the same parameters and step counts as eager steps of torch.optim."""
    nets = [model("cuda"), model("cuda")]
    ours = getattr(fot, name)(nets[0].parameters(), lr=1e-2, weight_decay=0.01,
                              capturable=True)
    theirs = getattr(torch.optim, name)(nets[1].parameters(), lr=1e-2, weight_decay=0.01)
    x = torch.randn(32, 6, device="cuda", generator=torch.Generator("cuda").manual_seed(2))

    def grads(net):
        net.zero_grad(set_to_none=False)
        ((net(x) - x[:, :3].sin()) ** 2).mean().backward()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up: state, tables and compiled kernels made
            grads(nets[0])
            ours.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    grads(nets[0])
    with torch.cuda.graph(graph):
        ours.step()
    for _ in range(3):
        grads(nets[1])
        theirs.step()
    for _ in range(10):
        grads(nets[0])
        graph.replay()
        grads(nets[1])
        theirs.step()
    torch.cuda.synchronize()
    for p, q in zip(*(n.parameters() for n in nets), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
    assert float(ours.state[next(nets[0].parameters())]["step"]) == 13
