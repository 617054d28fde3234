"""One rule, one place: every surface is derived from the Rule registry.

The functional wrappers, the optimizer classes, argument checking, the
planner's state slots, the command line's choices, the benchmark's calls and
the demo's learning rates all come from the registry entries; and a rule
registered by a user (in a subprocess, so this process's registry is left
alone) gets every one of them without a line of fusedopt being edited.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from rule_table import OPTIMIZER_INFO, covered

import fusedopt as fo
from fusedopt import bench, cli
from fusedopt.kernels import REQUIRED, RULES, VARIANTS, optimizer_names, optimizer_rule
from fusedopt.train import planner


def test_the_tests_table_covers_every_rule_and_optimizer():
    rules, rows, names, optimizer_rows = covered()
    assert rules == rows, f"add a RULE_INFO row in tests/rule_table.py for {rules ^ rows}"
    assert names == optimizer_rows, \
        f"add an OPTIMIZER_INFO row in tests/rule_table.py for {names ^ optimizer_rows}"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_has_a_function_with_an_explicit_signature(name):
    v = VARIANTS[name]
    function = getattr(fo, name + "_")
    assert function is fo.functional.FUNCTIONS[name + "_"]
    params = inspect.signature(function).parameters
    expected = [*v.rule.arrays, "step", *(h.name for h in v.hyper), "master",
                "stochastic_rounding", "seed", "rounding_offset", "backend"]
    assert list(params) == expected
    # step is required where the rule needs it; elsewhere only stochastic rounding uses it
    assert (params["step"].default is inspect.Parameter.empty) == v.rule.needs_step
    for h in v.hyper:
        default = params[h.name].default
        assert (default is inspect.Parameter.empty) if h.required else default == h.default
        assert h.doc in function.__doc__
    for fixed in v.fixed:
        assert fixed not in params  # adamw_ has no decoupled_weight_decay: it is always on
    assert function.__doc__.startswith(inspect.cleandoc(v.doc).splitlines()[0])


def test_adams_defaults_are_written_once():
    """beta2=0.999 is the registry's, and every surface shows it."""
    adam = RULES["adam"]
    beta2 = next(h for h in adam.hyper if h.name == "beta2")
    assert beta2.default == 0.999
    for surface in (fo.adam_, fo.adamw_, fo.amsgrad_, fo.Adam.__init__, fo.AdamW.__init__):
        assert inspect.signature(surface).parameters["beta2"].default == 0.999


@pytest.mark.parametrize("name", sorted(optimizer_names()))
def test_each_optimizer_name_has_a_class_state_planner_slots_and_a_demo_rate(name):
    variant, switches = optimizer_names()[name]
    rule = optimizer_rule(name)
    cls = getattr(fo, variant.optimizer)
    assert set(inspect.signature(cls).parameters) >= {h.name for h in variant.hyper
                                                      if h.name != "grad_scale"} | set(switches)
    opt = fo.make_optimizer(name, [np.zeros(3, np.float32)])
    assert type(opt) is cls and opt.rule is rule
    assert opt.lr == rule.typical_lr  # make_optimizer's (and the demo's) default rate
    opt.step([np.ones(3, np.float32)])
    assert [s.shape for s in opt.groups[0].state[0]] == [(3,)] * len(rule.state)
    slots = len(rule.state)
    parts = planner.parameter_bytes([(10, 10)], np.float32, name)
    assert parts[f"optimizer state ({slots} slots)"] == slots * 100 * 4


def test_state_slots_by_hand():
    assert {n: planner.state_slots(n) for n in ("sgd", "momentum", "rmsprop", "adam", "adamw",
                                                 "amsgrad", "nadam", "lion")} == \
        {"sgd": 0, "momentum": 1, "rmsprop": 1, "adam": 2, "adamw": 2, "amsgrad": 3,
         "nadam": 2, "lion": 1}


def _choices(parser, command: str, flag: str) -> list[str]:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if flag in a.option_strings).choices


def test_the_command_line_offers_every_optimizer_and_rule():
    parser = cli.build_parser()
    for command in ("demo", "plan", "profile"):
        assert sorted(_choices(parser, command, "--optimizer")) == sorted(optimizer_names())
    assert set(bench.bench_rules()) == {n for n, r in RULES.items() if r.is_optimizer_rule}


@pytest.mark.parametrize("rule_name", list(bench.bench_rules()))
def test_the_benchmark_calls_every_rule_from_its_entry(rule_name):
    rule = RULES[rule_name]
    hyper = bench.bench_hyper(rule)
    assert REQUIRED not in hyper.values() and hyper["lr"] == bench.BENCH_LR
    step = bench.make_step(rule_name, "fusedopt", 64)
    step()
    step()  # the step count advances where the rule needs one
    equivalent = bench.torch_equivalent(rule)
    assert (equivalent is None) == (rule.torch_equivalent is None)


def test_optimizer_hyperparameters_are_checked_from_their_ranges():
    for name, kwargs in OPTIMIZER_INFO.items():
        cls = getattr(fo, optimizer_names()[name][0].optimizer)
        for h in optimizer_names()[name][0].hyper:
            if h.kind == "flag" or h.name == "grad_scale":
                continue
            bad = (h.lo - 1.0) if h.lo is not None else None
            if bad is None:
                continue
            with pytest.raises(ValueError, match=h.name):
                cls([np.zeros(2, np.float32)], **{**kwargs, h.name: bad})


USER_RULE = '''
"""A user's own rule: signSGD with momentum-free sign steps (Bernstein et al. 2018)."""
from fusedopt.kernels.language import sign
from fusedopt.kernels.registry import GRAD_DOC, GRAD_SCALE, PARAM_DOC, real, register


def signsgd_scalars(*, lr, grad_scale):
    return (grad_scale, lr)


@register(arrays={"param": PARAM_DOC, "grad": GRAD_DOC}, writes=("param",),
          host_scalars=signsgd_scalars,
          hyper=(real("lr", 0.01, "step per coordinate"), GRAD_SCALE),
          typical_lr=0.01, optimizer="SignSGD")
def signsgd(param, grad, grad_scale, lr):
    """signSGD: theta <- theta - lr * sign(g)."""
    return (param - lr * sign(grad * grad_scale),)
'''

USER_SCRIPT = '''
import sys, inspect
import numpy as np
import fusedopt as fo
sys.path.insert(0, sys.argv[1])
import my_rules  # registers signsgd, after fusedopt was imported

from fusedopt import cli
from fusedopt.backends import cupy_cuda
from fusedopt.train import planner

p, g = np.ones(5, np.float32), np.array([1, -2, 0, 3, -0.5], np.float32)
q = p.copy()
try:  # the reference backend needs the rule's oracle, and says so before writing
    fo.signsgd_(q, g, lr=0.25, backend="numpy")
except ValueError as exc:
    print("oracle", "has none" in str(exc) and (q == p).all())
from fusedopt.kernels.reference import REFERENCE
REFERENCE["signsgd"] = lambda param, grad, *, lr, grad_scale=1.0: (
    param - lr * np.sign(grad * grad_scale),)
for backend in ("numba", "numpy"):
    q = p.copy()
    fo.signsgd_(q, g, lr=0.25, backend=backend)
    print(backend, q.tolist())
print("signature", list(inspect.signature(fo.signsgd_).parameters))
opt = fo.make_optimizer("signsgd", [p])
opt.step([g])
print("optimizer", type(opt).__name__, [round(float(x), 6) for x in p])
try:
    fo.signsgd_(p, g, lr=-1.0)
except ValueError as exc:
    print("checked", str(exc).split(";")[0])
print("slots", planner.state_slots("signsgd"))
args = cli.build_parser().parse_args(["demo", "--optimizer", "signsgd"])
print("cli", args.optimizer)
print("cuda", 'extern "C" __global__ void fusedopt_signsgd_float32(' in
      cupy_cuda.cuda_source("signsgd", "float32"))
'''


def test_a_users_rule_gets_every_surface_with_no_edit_of_fusedopt(tmp_path):
    (tmp_path / "my_rules.py").write_text(textwrap.dedent(USER_RULE))
    script = tmp_path / "use.py"
    script.write_text(textwrap.dedent(USER_SCRIPT))
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    expected = str([0.75, 1.25, 1.0, 0.75, 1.25])  # hand-derived: 1 - 0.25 * sign(g)
    assert lines["oracle"] == "True"
    assert lines["numba"] == expected and lines["numpy"] == expected
    assert lines["signature"] == str(["param", "grad", "step", "lr", "grad_scale", "master",
                                      "stochastic_rounding", "seed", "rounding_offset",
                                      "backend"])
    assert lines["optimizer"] == "SignSGD " + str([0.99, 1.01, 1.0, 0.99, 1.01])
    assert lines["checked"].startswith("signsgd_: lr=-1.0 is out of range")
    assert lines["slots"] == "0" and lines["cli"] == "signsgd" and lines["cuda"] == "True"
