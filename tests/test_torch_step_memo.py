"""fusedopt.torch keeps last step's checks and addresses while the tensors' fingerprint
holds; anything a user may do to the tensors between steps must still be seen.

The oracle is torch.optim.Adam run through the same sequence of edits.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="fusedopt.torch needs torch (pip install torch)")
import fusedopt.torch as fot  # noqa: E402

SHAPES = [(4, 3), (5,), (2, 2, 2)]


def pair(seed=0):
    """The same parameters twice: for fusedopt, and for torch."""
    torch.manual_seed(seed)
    values = [torch.randn(s) for s in SHAPES]
    return ([torch.nn.Parameter(v.clone()) for v in values],
            [torch.nn.Parameter(v.clone()) for v in values])


def set_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def assert_same(ours, theirs):
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-6)


def test_gradients_rewritten_in_place_or_replaced_follow_torch():
    ours, theirs = pair()
    opt, ref = fot.Adam(ours, lr=0.01), torch.optim.Adam(theirs, lr=0.01)
    for step in range(6):
        for params in (ours, theirs):
            if step % 2:  # the same gradient tensors, new values
                g = torch.Generator().manual_seed(step)
                for p in params:
                    p.grad.copy_(torch.randn(p.shape, generator=g))
            else:  # new gradient tensors (zero_grad(set_to_none=True), then backward)
                set_grads(params, step)
        opt.step()
        ref.step()
        assert_same(ours, theirs)


def test_a_data_swap_between_steps_is_followed():
    ours, theirs = pair()
    opt, ref = fot.Adam(ours, lr=0.01), torch.optim.Adam(theirs, lr=0.01)
    for step in range(4):
        set_grads(ours, step)
        set_grads(theirs, step)
        if step == 2:  # new memory under the same Parameter
            fresh = torch.linspace(-1, 1, 12).reshape(4, 3)
            ours[0].data = fresh.clone()
            theirs[0].data = fresh.clone()
        opt.step()
        ref.step()
        assert_same(ours, theirs)


def test_a_parameter_without_a_gradient_is_left_alone_as_torch_does():
    ours, theirs = pair()
    opt, ref = fot.Adam(ours, lr=0.01), torch.optim.Adam(theirs, lr=0.01)
    for step in range(5):
        set_grads(ours, step)
        set_grads(theirs, step)
        if step in (2, 3):
            ours[1].grad = None
            theirs[1].grad = None
        opt.step()
        ref.step()
        assert_same(ours, theirs)
    assert float(opt.state[ours[1]]["step"]) == float(ref.state[theirs[1]]["step"]) == 3


@pytest.mark.parametrize("edit", ["resize state", "replace state", "float64 grad",
                                  "transposed param"])
def test_tensors_broken_after_kept_steps_are_refused_before_any_write(edit):
    ours, _ = pair()
    opt = fot.Adam(ours, lr=0.01)
    for step in range(2):
        set_grads(ours, step)
        opt.step()
    state = opt.state[ours[0]]
    if edit == "resize state":
        state["exp_avg"].resize_(3)
    elif edit == "replace state":
        state["exp_avg_sq"] = torch.zeros(7)
    elif edit == "float64 grad":
        ours[2].grad.data = ours[2].grad.data.double()  # torch refuses p.grad = double
    else:
        ours[0].data = ours[0].data.t()
    before = [p.detach().clone() for p in ours]
    steps = [float(opt.state[p]["step"]) for p in ours]
    with pytest.raises((TypeError, ValueError)):
        opt.step()
    assert_same(ours, before)
    assert [float(opt.state[p]["step"]) for p in ours] == steps


def test_a_reloaded_state_dict_is_used_after_kept_steps():
    ours, theirs = pair()
    opt, ref = fot.Adam(ours, lr=0.01), torch.optim.Adam(theirs, lr=0.01)
    set_grads(ours, 0)
    set_grads(theirs, 0)
    opt.step()
    ref.step()
    saved = ref.state_dict()
    params_then = [p.detach().clone() for p in theirs]
    for step in (1, 2):
        set_grads(ours, step)
        opt.step()
    opt.load_state_dict(saved)  # back to step 1's state, torch's format
    with torch.no_grad():
        for p, v in zip(ours, params_then, strict=True):
            p.copy_(v)
    for step in (3, 4):
        set_grads(ours, step)
        set_grads(theirs, step)
        opt.step()
        ref.step()
    assert_same(ours, theirs)
