"""The optimizers on bfloat16 and float16 parameters: state_dtype, master weights, stochastic
rounding, arenas, clipping, checkpoints and bad input.

The functional calls are checked against the float64 oracle in test_low_precision.py;
here an optimizer's steps must store exactly the bits of the same functional calls (same
seed, same step: the same random bits), and resume bit-identically from a file."""

from __future__ import annotations

import numpy as np
import pytest
from lowp_oracle import ml_dtypes

import fusedopt as fo

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
DTYPES = {"bfloat16": BF16, "float16": F16, "float32": np.dtype(np.float32)}
RECIPES = {  # param dtype, state_dtype option, master_weights, stochastic_rounding
    "bf16 params": ("bfloat16", None, False, False),
    "bf16 everything, stochastic": ("bfloat16", "bfloat16", False, True),
    "fp16 params, fp32 master": ("float16", None, True, False),
    "bf16 params and state, fp32 master, stochastic": ("bfloat16", "bfloat16", True, True),
    "fp32 params, bf16 state": ("float32", "bfloat16", False, True),
}
LR = {"SGD": 0.1, "Momentum": 0.1, "RMSprop": 0.01, "Adam": 0.01, "AdamW": 0.01,
      "NAdam": 0.01, "Lion": 0.001}


def shapes():
    return [(37,), (5, 9), (64,)]


def make(dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(DTYPES[dtype]) for s in shapes()]


def grads_for(dtype: str, t: int):
    rng = np.random.default_rng(100 + t)
    return [rng.standard_normal(s).astype(DTYPES[dtype]) for s in shapes()]


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("cls_name", list(LR))
def test_an_optimizer_step_is_the_functional_call(cls_name, recipe):
    dtype, state_dtype, master_weights, stochastic = RECIPES[recipe]
    params = make(dtype)
    opt = getattr(fo, cls_name)(params, lr=LR[cls_name], state_dtype=state_dtype,
                                master_weights=master_weights, stochastic_rounding=stochastic,
                                seed=11)
    rule = opt.rule
    mine = make(dtype)
    state = [[np.zeros(s, DTYPES[state_dtype or "float32"]) for _ in rule.state]
             for s in shapes()]
    masters = [p.astype(np.float32) if master_weights and dtype != "float32" else None
               for p in mine]
    function = fo.functional.FUNCTIONS[opt.variant.name + "_"]
    hyper = {h.name: opt.groups[0].hyper[h.name] for h in opt.variant.hyper
             if h.name in opt.groups[0].hyper}
    for t in range(1, 4):
        grads = grads_for(dtype, t)
        opt.step(grads)
        offset = 0  # the optimizer numbers the elements across its tensors
        for p, g, s, m in zip(mine, grads, state, masters, strict=True):
            extra = {"master": m} if m is not None else {}
            function(p, g, *s, step=t, **hyper, stochastic_rounding=stochastic, seed=11,
                     rounding_offset=offset, **extra)
            offset += p.size
    for p, q in zip(params, mine, strict=True):
        np.testing.assert_array_equal(p.view(np.uint8), q.view(np.uint8))


@pytest.mark.parametrize("arena", [False, True], ids=["list", "arena"])
def test_a_run_resumes_bit_identically_from_a_file(tmp_path, arena):
    def build(values):
        params = fo.ParamArena(values) if arena else values
        return params, fo.Adam(params, lr=0.01, state_dtype="bfloat16", master_weights=True,
                               stochastic_rounding=True, seed=3, max_grad_norm=5.0)

    def step(params, opt, t):
        grads = grads_for("bfloat16", t)
        if arena:
            for slot, g in zip(params.grads, grads, strict=True):
                slot[...] = g
            opt.step()
        else:
            opt.step(grads)

    def tensors(params):
        return params.params if arena else params

    unbroken, opt = build(make("bfloat16"))
    for t in range(1, 7):
        step(unbroken, opt, t)
    first, opt1 = build(make("bfloat16"))
    for t in range(1, 4):
        step(first, opt1, t)
    fo.save(tmp_path / "run.npz", opt1)
    resumed, opt2 = build([np.zeros(s, BF16) for s in shapes()])
    opt2.seed = 0  # the file's seed wins: it is part of the run
    fo.load(tmp_path / "run.npz", opt2)
    for t in range(4, 7):
        step(resumed, opt2, t)
    for a, b in zip(tensors(unbroken), tensors(resumed), strict=True):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_an_arena_of_16_bit_buffers_launches_once_per_dtype(monkeypatch):
    rng = np.random.default_rng(0)
    arena = fo.ParamArena([rng.standard_normal(10).astype(F16),
                           rng.standard_normal((3, 4)).astype(BF16),
                           rng.standard_normal(7).astype(F16), np.ones(5, np.float32)])
    opt = fo.Adam(arena, lr=0.01, master_weights=True)
    launches = []
    original = opt._impl.launch
    monkeypatch.setattr(opt._impl, "launch",
                        lambda rule, arrays, prepared, offset=0: (
                            launches.append(len(arrays)),
                            original(rule, arrays, prepared, offset)))
    opt.step()
    assert sorted(launches) == [4, 5, 5]  # float32: no master; each 16-bit buffer: + master


def test_clipping_and_the_nonfinite_check_read_16_bit_gradients():
    params = make("bfloat16")
    opt = fo.SGD(params, lr=0.1, max_grad_norm=1.0, nonfinite="skip")
    grads = grads_for("bfloat16", 1)
    opt.step(grads)
    expected = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
    assert opt.last_grad_norm == pytest.approx(expected, rel=1e-12)
    before = [p.copy() for p in params]
    grads[1][2, 3] = np.nan
    with pytest.warns(RuntimeWarning, match="skipped"):
        assert opt.step(grads) is False
    for p, b in zip(params, before, strict=True):
        np.testing.assert_array_equal(p.view(np.uint16), b.view(np.uint16))


def test_torch_bfloat16_parameters_are_the_ml_dtypes_call():
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    values = make("bfloat16")
    tensors = [torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16) for v in values]
    arrays = [v.copy() for v in values]
    kwargs = dict(lr=0.01, state_dtype="bfloat16", stochastic_rounding=True, seed=2)
    opt_t, opt_a = fo.Adam(tensors, **kwargs), fo.Adam(arrays, **kwargs)
    for t in range(1, 4):
        grads = grads_for("bfloat16", t)
        opt_a.step(grads)
        opt_t.step([torch.from_numpy(g.astype(np.float32)).to(torch.bfloat16) for g in grads])
    for tensor, array in zip(tensors, arrays, strict=True):
        np.testing.assert_array_equal(tensor.view(torch.int16).numpy().view(np.uint16),
                                      array.view(np.uint16))


@pytest.mark.parametrize("kwargs, error, words", [
    ({"state_dtype": "float16"}, ValueError, "state_dtype"),
    ({"state_dtype": "int8"}, ValueError, "state_dtype"),
    ({"master_weights": "yes"}, TypeError, "master_weights"),
    ({"stochastic_rounding": 1}, TypeError, "stochastic_rounding"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 2**64}, ValueError, "seed"),
])
def test_bad_precision_options_are_named(kwargs, error, words):
    with pytest.raises(error, match=words):
        fo.Adam(make("bfloat16"), **kwargs)


def test_float64_parameters_keep_float64_state():
    with pytest.raises(ValueError, match="float64"):
        fo.Adam([np.ones(3)], state_dtype="bfloat16")


def test_a_gradient_of_another_16_bit_dtype_is_refused_before_any_write():
    params = make("bfloat16")
    before = [p.copy() for p in params]
    opt = fo.Adam(params, lr=0.01)
    grads = grads_for("float16", 1)
    with pytest.raises(ValueError, match=r"grads\[0\] is float16"):
        opt.step(grads)
    for p, b in zip(params, before, strict=True):
        np.testing.assert_array_equal(p.view(np.uint16), b.view(np.uint16))
    opt.step([g.astype(np.float32) for g in grads])  # float32 gradients are welcome


def test_a_checkpoint_of_other_storage_is_refused(tmp_path):
    opt = fo.Adam(make("bfloat16"), lr=0.01)
    opt.step(grads_for("bfloat16", 1))
    fo.save(tmp_path / "bf16.npz", opt)
    other = fo.Adam(make("float16"), lr=0.01)
    with pytest.raises(ValueError, match="saved as"):
        fo.load(tmp_path / "bf16.npz", other)
    with pytest.raises(ValueError, match="state_dtype"):
        fo.load(tmp_path / "bf16.npz", fo.Adam(make("bfloat16"), lr=0.01,
                                                state_dtype="bfloat16"))


# ------------------------------------------------- the demo, the planner and the benchmark
def test_the_demo_trains_as_well_in_bf16_with_stochastic_rounding():
    from fusedopt.train import demo

    quiet = dict(out=None, progress=False, log=lambda *a: None, epochs=30)
    fp32 = demo.run(precision="fp32", **quiet).test_accuracy
    bf16_sr = demo.run(precision="bf16-sr", **quiet).test_accuracy
    fp16_master = demo.run(precision="fp16-master", **quiet).test_accuracy
    assert bf16_sr >= fp32 - 0.01 and fp16_master >= fp32 - 0.01, (fp32, bf16_sr, fp16_master)
    with pytest.raises(ValueError, match="precision"):
        demo.run(precision="fp8", **quiet)


@pytest.mark.parametrize("precision, param, state, master", [
    ("bf16", 2, 2, 0), ("bf16-params", 2, 4, 0), ("fp16-master", 2, 4, 4), ("fp32", 4, 4, 0)])
def test_the_planner_counts_each_slot_in_its_dtype(precision, param, state, master):
    from fusedopt.arena import ALIGN_BYTES
    from fusedopt.train.memory_model import parameter_bytes

    shapes = [(64, 256)]  # one aligned tensor: n = 16384 elements
    n = 64 * 256
    parts = parameter_bytes(shapes, np.float32, "adam", precision=precision)
    assert parts["parameters"] == parts["gradients"] == n * param + ALIGN_BYTES
    assert sum(v for k, v in parts.items() if k.startswith("optimizer state")) == 2 * n * state
    assert parts.get("float32 master copy", 0) == n * master


def test_the_precision_benchmark_reports_every_recipe(capsys):
    from fusedopt import cli

    assert cli.main(["bench", "--precision", "--sizes", "4096", "--repeats", "1",
                     "--rules", "sgd,adam"]) == 0
    out = capsys.readouterr().out
    for recipe in ("fp32", "bf16-params", "fp32-master", "bf16", "bf16-sr"):
        assert f" {recipe} " in out
    assert "x math floor" in out and "speedup vs fp32" in out
    assert cli.main(["bench", "--precision", "fp8"]) == 2


def test_the_gpu_precision_benchmark_says_what_it_needs(capsys):
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: bench/gpu_check.sh runs the GPU precision benchmark")
    from fusedopt import cli

    assert cli.main(["bench", "--precision", "--backend", "cupy", "--rules", "adam"]) == 2
    assert "torch with CUDA" in capsys.readouterr().err


def test_tensors_of_one_size_draw_different_rounding_bits():
    """Every update lands halfway between two bfloat16 values: stochastic rounding rounds up
    about half the elements, and two tensors of one size must not share the pattern."""
    params = [np.ones(4096, BF16), np.ones(4096, BF16)]
    opt = fo.SGD(params, lr=1.0, stochastic_rounding=True, seed=1)
    half_ulp = 2.0**-9  # below 1.0 the bfloat16 spacing is 2**-8
    opt.step([np.full(4096, half_ulp, np.float32)] * 2)
    down = [p < 1.0 for p in params]
    assert 0.4 < down[0].mean() < 0.6 and 0.4 < down[1].mean() < 0.6
    assert 0.4 < (down[0] == down[1]).mean() < 0.6  # independent, not the same bits


def test_a_checkpoint_is_judged_by_how_its_state_is_stored():
    """bf16 parameters keep float32 state by default: a state_dtype='float32' optimizer holds
    the same, and loads it; a run saved without stochastic rounding is another run."""
    opt = fo.Adam(make("bfloat16"), lr=0.01)
    opt.step(grads_for("bfloat16", 1))
    state = opt.state_dict()
    fo.Adam(make("bfloat16"), lr=0.01, state_dtype="float32").load_state_dict(state)
    with pytest.raises(ValueError, match="stochastic_rounding"):
        fo.Adam(make("bfloat16"), lr=0.01, stochastic_rounding=True).load_state_dict(state)
    with pytest.raises(TypeError, match="state_dtype"):
        fo.Adam(make("bfloat16"), state_dtype=5)


@pytest.mark.parametrize("arena", [False, True], ids=["list", "arena"])
def test_a_stateless_rule_resumes_its_master_copies(tmp_path, arena):
    """SGD keeps no state, but its master copies are part of the run: they are saved and
    loaded, and the resumed run is the unbroken one."""
    def build():
        values = [np.ones(4, BF16), np.ones(3, BF16)]
        params = fo.ParamArena(values) if arena else values
        return params, fo.SGD(params, lr=1e-3, master_weights=True)

    def step(params, opt):
        if arena:
            for g in params.grads:
                g[...] = 1.0
            opt.step()
        else:
            opt.step([np.ones(4, np.float32), np.ones(3, np.float32)])

    def tensors(params):
        return params.params if arena else params

    unbroken, opt = build()
    for _ in range(10):
        step(unbroken, opt)
    first, opt1 = build()
    step(first, opt1)
    fo.save(tmp_path / "sgd.npz", opt1)
    resumed, opt2 = build()
    fo.load(tmp_path / "sgd.npz", opt2)
    for _ in range(9):
        step(resumed, opt2)
    for a, b in zip(tensors(unbroken), tensors(resumed), strict=True):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_a_uint16_array_is_not_a_bfloat16_gradient():
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    param = torch.ones(4, dtype=torch.bfloat16)
    opt = fo.SGD([param], lr=1.0)
    for grad in (np.full(4, 0x3F80, np.uint16), torch.ones(4, dtype=torch.uint16)):
        with pytest.raises((TypeError, ValueError), match=r"grads\[0\]"):
            opt.step([grad])
    assert (param == 1).all()


def test_the_precision_benchmark_lays_every_recipe_over_the_same_memory():
    """Each recipe's arrays start at the shared buffer's first byte; the bytes floor leaves
    every bit as it was; restore() puts a recipe's first values back after the library's
    update changed them."""
    pytest.importorskip("ml_dtypes", reason="the bfloat16 recipes need ml_dtypes")
    from fusedopt import bench_precision

    n = 4096
    recipes = list(bench_precision.RECIPES)
    memory = bench_precision._memory_for("adam", recipes, n)
    for recipe in recipes:
        arrays, master, _ = bench_precision._storage_arrays(
            "adam", recipe, n, np.random.default_rng(0), memory)
        assert arrays[0].__array_interface__["data"][0] == memory.ctypes.data
        laid = arrays + ([] if master is None else [master])
        end = max(a.__array_interface__["data"][0] + a.nbytes for a in laid)
        assert end <= memory.ctypes.data + memory.nbytes
        restore, calls, _ = bench_precision._calls("adam", recipe, n, memory)
        restore()
        first = memory.copy()
        calls["bytes floor"]()
        assert np.array_equal(memory, first)
        calls["fusedopt"]()
        assert not np.array_equal(memory, first)
        restore()
        assert np.array_equal(memory, first)
