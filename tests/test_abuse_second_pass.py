"""Defects of the same kinds as the issue's seventeen, found by a second hostile pass; each test
failed before its fix."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import fusedopt as fo


def fusedopt_cli(*args):
    return subprocess.run([sys.executable, "-m", "fusedopt", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args, words", [
    # asks for ~745 GiB: refused before any allocation, naming the flag
    (["bench", "--sizes", "100000000000", "--rules", "lion", "--impls", "fusedopt",
      "--repeats", "1", "--seconds", "0"], "sizes"),
    (["bench", "--sizes", "4611686018427387904", "--rules", "sgd", "--impls", "fusedopt"],
     "sizes"),
    # a 64 x 1e11 weight: refused from the plan, before the model is built
    (["profile", "--sizes", "8", "--layers", "64,100000000000,10", "--seconds", "0.01"],
     "layer"),
    (["plan", "--m", "1000", "--layers", "2.7,3"], "whole numbers"),
    (["bench", "--sizes", "1.9"], "whole numbers"),
])
def test_the_command_line_refuses_impossible_sizes_with_one_line(args, words):
    out = fusedopt_cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and words in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 3  # argparse's usage line, then the error


def test_a_memory_error_in_a_command_is_one_line(monkeypatch, capsys):
    from fusedopt import cli

    def exhausted(args):
        raise MemoryError("Unable to allocate 27.3 TiB")

    monkeypatch.setattr(cli, "cmd_plan", exhausted)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        if action.prog.endswith(" plan"):
            action.set_defaults(func=exhausted)
    assert cli.main(["plan", "--m", "1000", "--layers", "4,2"]) == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and "--m or --layers" in err


def test_the_step_count_stops_at_the_largest_a_checkpoint_holds():
    p, g = np.ones(4, np.float32), np.ones(4, np.float32)
    opt = fo.NAdam([p])
    opt.step([g])
    state = opt.state_dict()
    state["step"] = 2**53
    opt.load_state_dict(state)
    before = opt.state_dict()
    with pytest.raises(ValueError, match="2\\*\\*53"):
        opt.step([g])
    after = opt.state_dict()  # nothing written
    np.testing.assert_array_equal(after["groups"][0]["params"][0], before["groups"][0]["params"][0])
    np.testing.assert_array_equal(after["groups"][0]["state"]["exp_avg"][0],
                                  before["groups"][0]["state"]["exp_avg"][0])
    assert opt.step_count == 2**53
    opt.load_state_dict(opt.state_dict())  # what it holds still loads


def test_non_finite_state_loads_as_saved_with_a_warning(tmp_path):
    p = np.ones(4, np.float32)
    opt = fo.Adam([p], amsgrad=True)
    opt.step([np.full(4, 0.5, np.float32)])
    state = opt.state_dict()
    state["groups"][0]["state"]["max_exp_avg_sq"][0][1] = np.nan
    with pytest.warns(RuntimeWarning, match=r"max_exp_avg_sq\[0\] holds NaN"):
        opt.load_state_dict(state)
    loaded = opt.state_dict()["groups"][0]["state"]["max_exp_avg_sq"][0]
    assert np.isnan(loaded[1])  # a resumed run is the run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finite state loads silently
        fo.Adam([np.ones(4, np.float32)]).load_state_dict(fo.Adam([p]).state_dict())


def test_nadam_scalars_ignore_numpys_error_settings():
    p, g, m, v = (np.ones(4) for _ in range(4))
    expected = [a.copy() for a in (p, g, m, v)]
    fo.nadam_(*expected, step=5, momentum_decay=400.0)
    with np.errstate(all="raise"):
        fo.nadam_(p, g, m, v, step=5, momentum_decay=400.0)
        fo.NAdam([np.ones(4)], momentum_decay=1e308).step([np.ones(4)])
    np.testing.assert_array_equal(p, expected[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fo.nadam_(p, g, m, v, step=5, momentum_decay=1e308)


@pytest.mark.parametrize("update", ["adam_", "nadam_", "amsgrad_", "rmsprop_"])
def test_eps_zero_is_refused(update):
    function = getattr(fo, update)
    from fusedopt.kernels import VARIANTS

    rule = VARIANTS[update[:-1]].rule
    arrays = [np.zeros(4, np.float32) for _ in rule.arrays]
    kwargs = {"step": 1} if rule.needs_step else {}
    if "lr" in {h.name for h in rule.hyper} and any(h.name == "lr" and h.required
                                                   for h in rule.hyper):
        kwargs["lr"] = 0.1
    with pytest.raises(ValueError, match=r"eps=0\.0"):
        function(*arrays, eps=0.0, **kwargs)
    assert not any(a.any() for a in arrays)


@pytest.mark.parametrize("update, extra", [("lion_", {}), ("adamw_", {"step": 1})])
def test_decoupled_decay_above_one_is_refused(update, extra):
    from fusedopt.kernels import VARIANTS

    rule = VARIANTS[update[:-1]].rule
    arrays = [np.full(4, 1e30, np.float32) for _ in rule.arrays]
    before = [a.copy() for a in arrays]
    with pytest.raises(ValueError, match="lr \\* weight_decay"):
        getattr(fo, update)(*arrays, lr=1.0, weight_decay=1e20, **extra)
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(a, b)
    getattr(fo, update)(*arrays, lr=0.5, weight_decay=2.0, **extra)  # exactly 1 is allowed


def _step(x, y):
    np.ones((x.shape[1], 100))


@pytest.mark.parametrize("kwargs, error, words", [
    ({"sample_axis": 1.0}, TypeError, "sample_axis must be the int"),
    ({"sample_axis": 0.0}, TypeError, "sample_axis must be the int"),
    ({"memory_limit": 0.5}, ValueError, "memory_limit"),
    ({"max_batch_size": 1}, ValueError, "max_batch_size"),
    ({"max_batch_size": 32}, ValueError, "sizes="),
])
def test_measure_batch_size_refuses_before_any_step(kwargs, error, words):
    calls = []

    def step(x, y):
        calls.append(x.shape)

    X, Y = np.zeros((4, 2000), np.float32), np.zeros((1, 2000), np.float32)
    with pytest.raises(error, match=words):
        fo.measure_batch_size(step, X, Y, **kwargs)
    assert calls == []


def test_measure_batch_size_never_steps_above_the_cap():
    seen = []

    def step(x, y):
        seen.append(x.shape[1])
        np.ones((x.shape[1], 100))

    X, Y = np.zeros((4, 2000), np.float32), np.zeros((1, 2000), np.float32)
    plan = fo.measure_batch_size(step, X, Y, sizes=(2, 16), max_batch_size=16)
    assert max(seen) <= 16 and plan.batch_size <= 16


def test_measure_batch_size_names_a_sparse_torch_tensor():
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    X = torch.zeros(4, 300).to_sparse()
    with pytest.raises(TypeError, match="to_dense"):
        fo.measure_batch_size(lambda x: None, X)
