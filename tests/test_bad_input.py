"""Bad input: a TypeError or ValueError naming the argument, and nothing changed."""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt as fo


def fresh(n=6, dtype=np.float32):
    rng = np.random.default_rng(3)
    p, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v = np.abs(rng.standard_normal(n)).astype(dtype)
    return p, g, m, v


def adam_call(**overrides):
    """A valid adam_ call, with some arguments replaced."""
    p, g, m, v = fresh()
    args = dict(param=p, grad=g, exp_avg=m, exp_avg_sq=v)
    kwargs = dict(step=1, lr=1e-3)
    for key, value in overrides.items():
        (args if key in args else kwargs)[key] = value(args) if callable(value) else value
    return (p, g, m, v), args, kwargs


BAD_ADAM = [
    # (override, exception, words the message must contain)
    (dict(grad=lambda a: a["grad"].tolist()), TypeError, ["grad", "NumPy"]),
    (dict(exp_avg=lambda a: a["exp_avg"].astype(np.float64)), TypeError, ["exp_avg", "dtype"]),
    (dict(param=lambda a: np.arange(6)), TypeError, ["param", "float32"]),
    (dict(exp_avg_sq=lambda a: np.zeros(7, np.float32)), ValueError, ["exp_avg_sq", "shape"]),
    (dict(exp_avg=lambda a: np.zeros(12, np.float32)[::2]), ValueError, ["exp_avg", "contiguous"]),
    (dict(exp_avg=lambda a: a["exp_avg_sq"]), ValueError, ["exp_avg", "exp_avg_sq", "share"]),
    (dict(grad=lambda a: a["param"]), ValueError, ["param", "grad", "share"]),
    (dict(step=0), ValueError, ["step"]),
    (dict(step=1.5), TypeError, ["step"]),
    (dict(step=True), TypeError, ["step"]),
    (dict(lr=float("nan")), ValueError, ["lr", "finite"]),
    (dict(lr=float("inf")), ValueError, ["lr", "finite"]),
    (dict(lr=-0.1), ValueError, ["lr", ">= 0"]),
    (dict(lr="0.1"), TypeError, ["lr"]),
    (dict(beta1=1.0), ValueError, ["beta1", "< 1"]),
    (dict(beta2=-0.1), ValueError, ["beta2"]),
    (dict(eps=-1e-8), ValueError, ["eps"]),
    (dict(weight_decay=-1.0), ValueError, ["weight_decay"]),
    (dict(decoupled_weight_decay=1), TypeError, ["decoupled_weight_decay"]),
    (dict(backend="tensorflow"), ValueError, ["backend", "numba"]),
    (dict(backend="cupy"), ValueError, ["backend", "cupy"]),
]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize(("override", "error", "words"), BAD_ADAM,
                         ids=[f"{next(iter(o))}-{i}" for i, (o, _, _) in enumerate(BAD_ADAM)])
def test_bad_adam_input_names_the_argument_and_changes_nothing(override, error, words, backend):
    if "backend" not in override:
        override = {**override, "backend": backend}
    originals, args, kwargs = adam_call(**override)
    snapshot = [a.copy() for a in originals]
    with pytest.raises(error) as info:
        fo.adam_(*args.values(), **kwargs)
    message = str(info.value)
    assert message.startswith("adam_:")
    for word in words:
        assert word in message, (word, message)
    for before, after in zip(snapshot, originals, strict=True):
        np.testing.assert_array_equal(before, after)


def test_read_only_state_is_refused_but_a_read_only_gradient_is_fine():
    p, g, m, v = fresh()
    g.flags.writeable = False
    fo.adam_(p, g, m, v, step=1)  # the gradient is only read
    v.flags.writeable = False
    before = [a.copy() for a in (p, m, v)]
    with pytest.raises(ValueError, match="exp_avg_sq is read-only"):
        fo.adam_(p, g, m, v, step=2)
    for b, a in zip(before, (p, m, v), strict=True):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_partially_overlapping_views_are_refused(backend):
    buffer = np.zeros(20, np.float32)
    with pytest.raises(ValueError, match="param and grad share memory"):
        fo.sgd_(buffer[:10], buffer[5:15], lr=0.1, backend=backend)
    fo.sgd_(buffer[:10], buffer[10:], lr=0.1, backend=backend)  # adjacent is fine


@pytest.mark.parametrize(("fn", "kwargs", "word"), [
    (fo.sgd_, dict(lr=None), "lr"),
    (fo.momentum_, dict(lr=0.1, dampening=1.5), "dampening"),
    (fo.momentum_, dict(lr=0.1, nesterov="yes"), "nesterov"),
    (fo.momentum_, dict(lr=0.1, beta=1.0), "beta"),
    (fo.rmsprop_, dict(lr=0.1, eps=float("nan")), "eps"),
    (fo.ewa_, dict(beta=2.0), "beta"),
])
def test_bad_hyperparameters_of_other_rules(fn, kwargs, word):
    arrays = fresh()[: {fo.sgd_: 2, fo.momentum_: 3, fo.rmsprop_: 3, fo.ewa_: 2}[fn]]
    before = [a.copy() for a in arrays]
    with pytest.raises((TypeError, ValueError), match=word):
        fn(*arrays, **kwargs)
    for b, a in zip(before, arrays, strict=True):
        np.testing.assert_array_equal(b, a)


def test_debias_bad_input():
    with pytest.raises(ValueError, match="step"):
        fo.debias(np.ones(2), beta=0.9, step=0)
    with pytest.raises(ValueError, match="beta"):
        fo.debias(np.ones(2), beta=1.0, step=1)
    with pytest.raises(TypeError, match="average"):
        fo.debias([1.0], beta=0.9, step=1)


def test_a_tensor_that_requires_grad_gets_advice():
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="detach"):
        fo.sgd_(p, torch.ones(3), lr=0.1)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_matrix_inputs_are_viewed_as_plain_arrays():
    """np.matrix stays 2-D when flattened; the checks view it as an ndarray (same memory)."""
    p = np.asmatrix(np.ones((2, 3), np.float32))
    g = np.asmatrix(np.full((2, 3), 2.0, np.float32))
    fo.sgd_(p, g, lr=0.25)
    np.testing.assert_array_equal(np.asarray(p), 0.5)


# ------------------------------------- every hyperparameter of every rule, from its range
def _bad_values(h):
    """(value, error) pairs each hyperparameter must refuse, from its registry range."""
    if h.kind == "flag":
        return [(1, TypeError), ("yes", TypeError)]
    out = [("0.1", TypeError), (float("nan"), ValueError), (float("inf"), ValueError)]
    if h.lo is not None:
        out.append((h.lo if h.lo_open else h.lo - 0.5, ValueError))
    if h.hi is not None:
        out.append((h.hi if h.hi_open else h.hi + 0.5, ValueError))
    return out


def _cases():
    from fusedopt.kernels import VARIANTS

    for v in VARIANTS.values():
        for h in v.hyper:
            for value, error in _bad_values(h):
                yield pytest.param(v.name, h.name, value, error,
                                   id=f"{v.name}-{h.name}-{value!r}")


@pytest.mark.parametrize("variant, name, value, error", list(_cases()))
def test_every_hyperparameter_is_checked_against_its_range(variant, name, value, error):
    from rule_table import RULE_INFO

    from fusedopt.kernels import VARIANTS

    v = VARIANTS[variant]
    rng = np.random.default_rng(0)
    arrays = [np.abs(rng.standard_normal(4)).astype(np.float32) for _ in v.rule.arrays]
    before = [a.copy() for a in arrays]
    kwargs = {k: val for k, val in RULE_INFO[v.rule.name].sample_hyper.items()
              if k in {h.name for h in v.hyper} or k == "step"}
    kwargs[name] = value
    with pytest.raises(error) as info:
        getattr(fo, variant + "_")(*arrays, **kwargs)
    assert str(info.value).startswith(f"{variant}_: {name}")
    for b, a in zip(before, arrays, strict=True):
        np.testing.assert_array_equal(b, a)
