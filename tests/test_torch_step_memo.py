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


EDITS = ["resize state", "replace state", "float64 grad", "transposed param",
         "shrunk param", "state set_ to other memory", "param set_ to a smaller view"]


@pytest.mark.parametrize("kept_grads", [True, False], ids=["same grads", "new grads"])
@pytest.mark.parametrize("edit", EDITS)
def test_tensors_broken_after_kept_steps_are_refused_before_any_write(edit, kept_grads):
    """Whether the loop keeps its gradient tensors (rewritten in place) or makes new ones
    each step, an edit the full checks refuse is refused after steps the memo kept."""
    ours, _ = pair()
    opt = fot.Adam(ours, lr=0.01)
    for step in range(3):
        if kept_grads and step:
            for p in ours:
                p.grad.copy_(torch.randn(p.shape))
        else:
            set_grads(ours, step)
        opt.step()
    state = opt.state[ours[0]]
    if edit == "resize state":
        state["exp_avg"].resize_(3)
    elif edit == "replace state":
        state["exp_avg_sq"] = torch.zeros(7)
    elif edit == "float64 grad":
        ours[2].grad.data = ours[2].grad.data.double()  # torch refuses p.grad = double
    elif edit == "transposed param":
        ours[0].data = ours[0].data.t()
    elif edit == "shrunk param":  # a view of its own memory: same address
        ours[1].data = ours[1].data[:3]
    elif edit == "state set_ to other memory":
        state["exp_avg"].set_(torch.zeros(5))
    else:
        with torch.no_grad():  # the first 2 of its own 5 elements: same address
            ours[1].set_(ours[1].untyped_storage(), 0, (2,))
    before = [p.detach().clone() for p in ours]
    steps = [float(opt.state[p]["step"]) for p in ours]
    with pytest.raises((TypeError, ValueError, RuntimeError)):
        opt.step()
    assert_same(ours, before)
    assert [float(opt.state[p]["step"]) for p in ours] == steps


def test_state_and_step_counts_replaced_by_the_user_are_followed_as_torch_does():
    """A new state dict, a new state tensor of the right kind, a new step count: the
    memo's kept addresses and counts are not used; torch.optim.Adam is the oracle."""
    ours, theirs = pair()
    opt, ref = fot.Adam(ours, lr=0.01), torch.optim.Adam(theirs, lr=0.01)
    for step in range(7):
        set_grads(ours, step)
        set_grads(theirs, step)
        for o, params in ((opt, ours), (ref, theirs)):
            if step == 2:
                o.state[params[1]]["exp_avg"] = torch.full((5,), 0.25)
            elif step == 3:
                o.state[params[2]]["step"] = torch.tensor(40.0)
            elif step == 5:
                old = o.state[params[0]]
                o.state[params[0]] = {k: v.clone() * (2 if k == "exp_avg" else 1)
                                      for k, v in old.items()}
        opt.step()
        ref.step()
        assert_same(ours, theirs)
    assert [float(opt.state[p]["step"]) for p in ours] == \
        [float(ref.state[p]["step"]) for p in theirs]


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


def test_the_memo_keeps_no_tensor_alive():
    """zero_grad(set_to_none=True) frees the gradients, and a replaced state tensor is
    freed: the memo holds neither."""
    import gc
    import weakref

    ours, _ = pair()
    opt = fot.Adam(ours, lr=0.01)
    for step in range(3):
        set_grads(ours, step)
        opt.step()
    grads = [weakref.ref(p.grad) for p in ours]
    replaced = weakref.ref(opt.state[ours[0]]["exp_avg"])
    opt.state[ours[0]]["exp_avg"] = torch.zeros_like(ours[0])
    opt.zero_grad(set_to_none=True)
    gc.collect()
    assert all(r() is None for r in grads) and replaced() is None
