"""The parallel optimizer in one process (no MPI needed), ``step(grad_scale=)``, and the
errors of ``comm=``/``shard_state=``.

The oracles: a plain optimizer (a world of one must change nothing), and the float64
reference for ``grad_scale``.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt as fo
from fusedopt import distributed
from fusedopt.kernels import reference
from fusedopt.optim.parallel import blocks

SHAPES = [(3, 4), (5,), (2, 2)]


def arena_and_grads(seed=0):
    rng = np.random.default_rng(seed)
    arena = fo.ParamArena([rng.standard_normal(s).astype(np.float32) for s in SHAPES])
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(4)]
    return arena, grads


@pytest.mark.parametrize("shard_state", [False, True])
def test_a_world_of_one_is_the_plain_optimizer(shard_state):
    ours, grads = arena_and_grads()
    plain, _ = arena_and_grads()
    opt = fo.Adam(ours, lr=0.01, max_grad_norm=1.0, shard_state=shard_state,
                  comm=distributed.init())
    ref = fo.Adam(plain, lr=0.01, max_grad_norm=1.0)
    assert distributed.init() is distributed.SOLO  # no launcher here
    for step_grads in grads:
        for arena in (ours, plain):
            for view, g in zip(arena.grads, step_grads, strict=True):
                view[...] = g
        opt.step()
        ref.step()
    for a, b in zip(ours.params, plain.params, strict=True):
        np.testing.assert_array_equal(a, b)
    assert opt.step_count == ref.step_count == 4
    assert "rank 0 of 1" in repr(opt)


def test_a_sharded_checkpoint_in_one_process_is_a_plain_one(tmp_path):
    ours, grads = arena_and_grads()
    plain, _ = arena_and_grads()
    opt = fo.Adam(ours, lr=0.01, shard_state=True)
    ref = fo.Adam(plain, lr=0.01)
    for step_grads in grads[:2]:
        for arena in (ours, plain):
            for view, g in zip(arena.grads, step_grads, strict=True):
                view[...] = g
        opt.step()
        ref.step()
    fo.save(tmp_path / "sharded.npz", opt)
    fo.save(tmp_path / "plain.npz", ref)
    one, two = np.load(tmp_path / "sharded.npz"), np.load(tmp_path / "plain.npz")
    assert sorted(one.files) == sorted(two.files)
    for name in one.files:
        np.testing.assert_array_equal(one[name], two[name])


@pytest.mark.parametrize("scale", [0.5, 1 / 3, 4.0])
def test_grad_scale_multiplies_the_gradients_inside_the_step(scale):
    rng = np.random.default_rng(3)
    p = rng.standard_normal(10).astype(np.float32)
    g = rng.standard_normal(10).astype(np.float32)
    opt = fo.Adam([p], lr=0.01)
    want, m, v = p.astype(np.float64), np.zeros(10), np.zeros(10)
    for t in (1, 2):
        opt.step([g], grad_scale=scale)
        want, m, v = reference.adam(want, g.astype(np.float64), m, v, lr=0.01, step=t,
                                    grad_scale=scale)
    np.testing.assert_allclose(p, want, rtol=2e-6, atol=1e-7)


def test_clipping_sees_the_scaled_gradients():
    p1, p2 = np.ones(4, np.float32), np.ones(4, np.float32)
    g = np.full(4, 10.0, np.float32)  # norm 20
    one = fo.SGD([p1], lr=0.1, max_grad_norm=5.0)
    two = fo.SGD([p2], lr=0.1, max_grad_norm=5.0)
    one.step([g], grad_scale=0.5)  # norm 10: clipped to 5
    two.step([g * 0.5])
    np.testing.assert_allclose(one.last_grad_norm, 10.0, rtol=1e-6)
    np.testing.assert_array_equal(p1, p2)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "2"])
def test_a_bad_grad_scale_is_refused_before_any_write(bad):
    p = np.ones(3, np.float32)
    opt = fo.Adam([p], lr=0.1)
    with pytest.raises((TypeError, ValueError), match="grad_scale"):
        opt.step([np.ones(3, np.float32)], grad_scale=bad)
    np.testing.assert_array_equal(p, 1.0)
    assert opt.step_count == 0


def test_shard_state_needs_an_arena_and_comm_a_communicator():
    with pytest.raises(TypeError, match="ParamArena"):
        fo.Adam([np.ones(3, np.float32)], lr=0.1, shard_state=True)
    with pytest.raises(TypeError, match="lacks"):
        fo.Adam(fo.ParamArena([(3,)]), lr=0.1, comm=object())
    opt = fo.Adam(fo.ParamArena([(3,)]), lr=0.1, shard_state=True)
    with pytest.raises(TypeError, match=r"arena\.grads"):
        opt.step([np.ones(3, np.float32)])
    with pytest.raises(ValueError, match="backend"):
        distributed.init("gloo")


def test_blocks_cut_every_element_once_in_equal_blocks_and_a_tail():
    for n in (0, 1, 5, 44, 1000):
        for size in (1, 2, 3, 7):
            counts, displs = blocks(n, size)
            assert sum(counts) == n
            assert set(counts[:-1]) <= {n // size} and counts[-1] == n // size + n % size
            assert displs == [sum(counts[:r]) for r in range(size)]


def test_more_ranks_than_elements_leave_the_first_blocks_empty():
    counts, _ = blocks(2, 3)
    assert counts == [0, 0, 2]


class StandIn:
    """Rank ``rank`` of ``size`` with no other rank: each collective moves this rank's own
    data as if the others sent zeros (enough to build and step a shard, and count it)."""

    def __init__(self, size: int, rank: int = 0):
        self.size, self.rank = size, rank

    def all_reduce(self, array):
        pass

    def reduce_scatter(self, send, recv, counts):
        lo = sum(counts[: self.rank])
        recv[...] = send[lo:lo + counts[self.rank]]

    def all_gather(self, buffer, counts):
        pass

    def gather(self, send, recv, counts, root=0):
        pass

    def broadcast(self, array, root=0):
        pass

    def barrier(self):
        pass


@pytest.mark.parametrize("precision", ["fp32", "bf16-master"])
@pytest.mark.parametrize("world", [2, 3, 8])
def test_the_planner_counts_one_ranks_shard_as_allocated(world, precision):
    from fusedopt.train.memory_model import parameter_bytes

    shapes = [(30, 20), (20,), (20, 7), (7,)]
    if precision == "fp32":
        arena, extra = fo.ParamArena(shapes), {}
    else:
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
        arena = fo.ParamArena(shapes, dtype=ml_dtypes.bfloat16)
        extra = dict(master_weights=True)
    opt = fo.Adam(arena, lr=0.01, comm=StandIn(world, rank=world - 1), shard_state=True,
                  **extra)
    opt.step()
    inner = opt.inner.groups[0]
    held = sum(a.nbytes for unit in inner.state for a in unit)
    masters = sum(m.nbytes for m in inner.master if m is not None)
    model = parameter_bytes(shapes, np.float32, "adam",
                            precision="fp32" if precision == "fp32" else "fp32-master",
                            world_size=world, shard_state=True)
    state = next(v for k, v in model.items() if k.startswith("optimizer state"))
    assert held == state  # the last rank holds the most: the model's count
    assert masters == model.get(f"float32 master copy (1/{world})", 0)
    blocks_held = sum(s.grad_sum.nbytes for s in opt._shards)
    assert blocks_held == model["summed gradient block (reduce-scatter)"]


def test_settings_written_on_the_parallel_optimizer_reach_its_steps():
    ours, grads = arena_and_grads()
    plain, _ = arena_and_grads()
    opt = fo.Adam(ours, lr=0.01, shard_state=True)
    ref = fo.Adam(plain, lr=0.01)
    opt.lr = ref.lr = 0.05
    opt.max_grad_norm = ref.max_grad_norm = 0.5
    for arena in (ours, plain):
        for view, g in zip(arena.grads, grads[0], strict=True):
            view[...] = g
    opt.step()
    ref.step()
    assert opt.lr == 0.05 and opt.inner.max_grad_norm == 0.5
    for a, b in zip(ours.params, plain.params, strict=True):
        np.testing.assert_array_equal(a, b)
