"""The functional API: one fused, in-place pass over memory per call.

There is one function per registered rule and variant (``sgd_``, ``momentum_``,
``rmsprop_``, ``adam_``, ``adamw_``, ``amsgrad_``, ``nadam_``, ``lion_``,
``ewa_``), generated here from :mod:`fusedopt.kernels.registry` with an
explicit signature (``help()``, ``inspect.signature`` and IDEs that introspect
see every keyword and its default) and a docstring carrying the rule's
equations and each argument's meaning and range.

Each function checks all of its input first (nothing is written if anything is
wrong), computes the step's scalars once on the host in float64, and runs the
rule on the backend that owns the arrays.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from numbers import Integral

import numpy as np

from fusedopt import _checks, config
from fusedopt.backends.base import ScalarRangeError
from fusedopt.kernels import VARIANTS, Hyper, Variant

_BACKEND_DOC = "None (by array type), \"numba\", \"cupy\" or \"numpy\" (the reference)"


def _fast_check(h: Hyper) -> str:
    """Source checking one hyperparameter: inline for the common case, a call otherwise."""
    n = h.name
    if h.kind == "flag":
        return f"    if type({n}) is not bool:\n        {n} = _flag(_F, {n!r}, {n})\n"
    conditions = [f"type({n}) is float", f"{n} - {n} == 0.0"]  # x - x == 0: finite
    if h.lo is not None:
        conditions.append(f"{n} {'>' if h.lo_open else '>='} {h.lo!r}")
    if h.hi is not None:
        conditions.append(f"{n} {'<' if h.hi_open else '<='} {h.hi!r}")
    check = (f"    if not ({' and '.join(conditions)}):\n"
             f"        {n} = _real(_F, {n!r}, {n}, {h.lo!r}, {h.hi!r}, lo_open={h.lo_open}, "
             f"hi_open={h.hi_open})\n")
    if h.kind == "optional":
        check = f"    if {n} is not None:\n" + textwrap.indent(check, "    ")
    return check


def _annotation(h: Hyper) -> str:
    return {"flag": "bool", "optional": "float | None"}.get(h.kind, "float")


def docstring(v: Variant, fname: str | None = None) -> str:
    """The docstring of ``v``'s function: its equations, then every argument."""
    rule = v.rule
    lines = [textwrap.dedent(v.doc).strip(), "", "Args:"]
    for name in rule.arrays:
        lines.append(f"    {name}: {rule.array_docs.get(name, '')}.")
    if rule.needs_step:
        lines.append("    step: t, the 1-based count of this update (the first call uses 1).")
    else:
        lines.append("    step: the 1-based count of this update; only stochastic rounding uses "
                     "it (needed then).")
    for h in v.hyper:
        default = "required" if h.required else f"default {h.default!r}"
        lines.append(f"    {h.name}: {h.doc}; {h.range_text()} ({default}).")
    for name, value in v.fixed.items():
        lines.append(f"    ({name} is {value!r} in {fname or v.name + '_'}.)")
    lines += ["    master: a float32 copy of a bfloat16/float16 parameter (same shape): the "
              "update reads and writes it, and writes the parameter rounded from it.",
              "    stochastic_rounding: round bfloat16/float16 stores stochastically (unbiased) "
              "instead of to nearest even.",
              "    seed: the stochastic rounding's seed, an int in [0, 2**64): the random bits "
              "are a hash of (seed, step, element index, array), identical on every backend; "
              "elements are numbered from rounding_offset (0) in each call: give each tensor "
              "its own seed, or its place in the model as rounding_offset, as the optimizers do.",
              "    rounding_offset: the index of the first element for stochastic rounding.",
              f"    backend: {_BACKEND_DOC}.", "",
              "Every array has the same shape, is C-contiguous and lives on one device; the "
              "written ones are updated in place. The parameter is float32, bfloat16 "
              "(ml_dtypes or torch), float16 or float64; the gradient its dtype or float32; "
              "the state float32 or bfloat16 (float64 with float64 parameters). The math runs "
              "in float32 (float64 for float64 parameters).", "",
              "Raises:", "    TypeError, ValueError: bad input, named; nothing is changed."]
    return "\n".join(lines)


def _factory_source(v: Variant) -> str:
    """Source of ``_make_<variant>_(_F, _NAMES, ...)``, which returns the function."""
    rule = v.rule
    fname = v.name + "_"
    params = [*rule.arrays, "*"]
    params.append("step: int" if rule.needs_step else "step: int | None = None")
    for h in v.hyper:
        params.append(f"{h.name}: {_annotation(h)}" + ("" if h.required
                                                       else f" = {h.default!r}"))
    params += ["master=None", "stochastic_rounding: bool = False", "seed: int = 0",
               "rounding_offset: int = 0", "backend: str | None = None"]
    body = "".join(_fast_check(h) for h in v.hyper)
    entries = [f"{h.name!r}: {h.name}" for h in v.hyper]
    entries += [f"{k!r}: {value!r}" for k, value in v.fixed.items()]
    if rule.needs_step:
        body += ("    if not (type(step) is int and 0 < step <= 9007199254740992):\n"
                 "        step = _step(_F, step)\n")
        entries.append("'step': step")
    else:  # only stochastic rounding reads it, but a bad one is refused all the same
        body += ("    if step is not None and not (type(step) is int\n"
                 "                                 and 0 < step <= 9007199254740992):\n"
                 "        step = _step(_F, step)\n")
    body += ("    if type(seed) is not int or not 0 <= seed < 18446744073709551616:\n"
             "        seed = _seed(_F, seed)\n")
    arrays = ", ".join(rule.arrays)
    # The prepared scalars of the last few calls, by value: a trainer calls fo.<rule>_ once
    # per tensor with the same hyperparameters, and only the first call of a step needs
    # the host arithmetic. Each position of the key holds one checked type (float, bool,
    # int), so equal keys mean equal hyperparameters.
    key = ", ".join([h.name for h in v.hyper] + (["step"] if rule.needs_step else []))
    function = (f"def {fname}({', '.join(params)}) -> None:\n"
                f"{body}"
                f"{_numpy_fast_source(rule, key, entries)}"
                "    if master is None and stochastic_rounding is False:\n"
                f"        impl, arrays, signature = _arrays(_F, _NAMES, ({arrays},), _WRITES, "
                "backend)\n"
                f"        key = (impl, signature, {key})\n"
                "        prepared = _memo.get(key)\n"
                "        if prepared is None:\n"
                "            try:\n"
                f"                prepared = impl.prepare(_RULE, {{{', '.join(entries)}}}, "
                "signature)\n"
                "            except _ScalarRangeError as exc:\n"
                "                raise ValueError(f'{_F}: {exc}') from None\n"
                "            if len(_memo) >= _MEMO_SIZE:\n"
                "                _memo.clear()\n"
                "            _memo[key] = prepared\n"
                "        impl.launch(_RULE, arrays, prepared)\n"
                "        return\n"
                f"    hyper = {{{', '.join(entries)}}}\n"
                "    stochastic_rounding = _flag(_F, 'stochastic_rounding', stochastic_rounding)\n"
                f"    impl, arrays, signature = _arrays(_F, _NAMES, ({arrays},), _WRITES, "
                "backend, master, stochastic_rounding)\n"
                "    rounding = _rounding(_F, signature, seed, step, rounding_offset)\n"
                "    try:\n"
                "        if rounding is None:\n"
                "            impl.update(_RULE, arrays, hyper, signature)\n"
                "        else:\n"
                "            impl.update(_RULE, arrays, hyper, signature, rounding[:2], "
                "rounding[2])\n"
                "    except _ScalarRangeError as exc:\n"
                "        raise ValueError(f'{_F}: {exc}') from None\n")
    return (f"def _make_{fname}(_F, _NAMES, _WRITES, _RULE):\n"
            "    _memo, _fast = {}, {}\n"
            + textwrap.indent(function, "    ") + f"    return {fname}\n\n\n")


def _numpy_fast_source(rule, key: str, entries: list[str]) -> str:
    """Source of the common CPU call, inline: NumPy arrays of one float dtype and shape,
    C-contiguous, the written ones writeable (every check of :func:`fusedopt._checks.arrays`
    but overlap, which the Numba driver checks before writing), the prepared scalars kept
    by dtype and value, and a small flat call made straight to the serial driver. Anything
    else (and any failure of the driver call) takes the general path below."""
    names = rule.arrays
    flags = [f"_f{k} = {a}.flags" for k, a in enumerate(names)]
    same = [f"{a}.dtype is _dt and {a}.shape == _shape" for a in names[1:]]
    layout = [f"_f{k}.c_contiguous" + (f" and _f{k}.writeable" if a in rule.writes else "")
              for k, a in enumerate(names)]
    arrays = ", ".join(names)
    lines = [
        "if (master is None and stochastic_rounding is False and backend is None and "
        + " and ".join(f"type({a}) is _ND" for a in names) + "):",
        f"    _dt, _shape = {names[0]}.dtype, {names[0]}.shape",
        *(f"    {f}" for f in flags),
        "    if ((_dt is _F32 or _dt is _F64) and "
        + " and ".join([*same, *layout]) + "):",
        f"        _key = (_dt, {key})",
        "        _found = _fast.get(_key)",
        "        if _found is None:",
        f"            _found = _fast_prepare(_F, _RULE, _NAMES, _dt, {{{', '.join(entries)}}})",
        "            if len(_fast) >= _MEMO_SIZE:",
        "                _fast.clear()",
        "            _fast[_key] = _found",
        f"        if len(_shape) == 1 and {names[0]}.size < _config.NUMBA_PARALLEL_MIN_SIZE:",
        "            try:",
        f"                if not _found[1]({arrays}, _found[0]):",
        "                    return",
        "            except Exception:  # a cache to rebuild: the general launch recovers",
        "                pass",
        f"        _launch(_RULE, ({arrays},), _found)  # also names an overlap, having written"
        " nothing",
        "        return",
    ]
    return "".join(f"    {line}\n" for line in lines)


def _fast_prepare(fname: str, rule, names, dtype, hyper: dict) -> tuple:
    """The Numba backend's prepared scalars for an all-``dtype`` call (the fast path's)."""
    from fusedopt import backends
    from fusedopt.kernels.dtypes import homogeneous

    try:
        return backends.get("numba").prepare(rule, hyper, homogeneous(names, dtype))
    except ScalarRangeError as exc:
        raise ValueError(f"{fname}: {exc}") from None


def _launch(rule, arrays: tuple, prepared: tuple) -> None:
    from fusedopt import backends

    backends.get("numba").launch(rule, arrays, prepared)


def _rounding(fname: str, signature, seed, step, offset) -> tuple[int, int, int] | None:
    """``(seed, step, offset)`` for stochastic rounding, checked; None when nothing rounds
    stochastically."""
    if not signature.stochastic:
        return None
    seed = _checks.seed(fname, seed)
    if step is None:
        raise TypeError(f"{fname}: stochastic_rounding=True needs step= (the update count), "
                        "so that every call draws new random bits")
    if isinstance(offset, bool) or not isinstance(offset, Integral) or not 0 <= offset < 2**62:
        raise ValueError(f"{fname}: rounding_offset={offset!r}; it is the index of the first "
                         "element in its model or arena buffer, an int in [0, 2**62)")
    return seed, _checks.step(fname, step), int(offset)


_HELPERS = {"_MEMO_SIZE": config.PREPARED_CACHE, "_config": config, "_ND": np.ndarray,
            "_F32": np.dtype(np.float32), "_F64": np.dtype(np.float64),
            "_fast_prepare": _fast_prepare, "_launch": _launch, "_real": _checks.real,
            "_flag": _checks.flag, "_step": _checks.step,
            "_arrays": _checks.arrays, "_ScalarRangeError": ScalarRangeError,
            "_rounding": _rounding, "_seed": _checks.seed}


def make_functions(variants: list[Variant]) -> dict[str, Callable[..., None]]:
    """Generate ``<variant>_`` for each variant (explicit signature, inline checks, one backend
    call), compiling all of them at once."""
    source = "".join(_factory_source(v) for v in variants)
    namespace = dict(_HELPERS)
    exec(compile(source, "<fusedopt.functional (generated)>", "exec", dont_inherit=True),
         namespace)
    out = {}
    for v in variants:
        fname = v.name + "_"
        function = namespace[f"_make_{fname}"](fname, v.rule.arrays, v.rule.writes, v.rule)
        function.__module__ = __name__
        function.__qualname__ = fname
        function.__doc__ = docstring(v, fname)
        out[fname] = function
    return out


def make_function(v: Variant) -> Callable[..., None]:
    """Generate ``<variant>_`` alone (see :func:`make_functions`)."""
    return make_functions([v])[v.name + "_"]


def generated_source(name: str) -> str:
    """The Python source generated for ``fo.<name>`` (e.g. ``"adam_"``), for the curious."""
    return _factory_source(VARIANTS[name.rstrip("_")])


FUNCTIONS: dict[str, Callable[..., None]] = make_functions(list(VARIANTS.values()))
globals().update(FUNCTIONS)


def debias(average, *, beta: float, step: int):
    r"""Bias-corrected copy of an exponentially weighted average started at zero.

    .. math::  \hat V_t = V_t / (1 - \beta^t)

    Returns a new array of the same type (a float32 or float64 array keeps its dtype;
    integer arrays give float64); ``average`` is not changed.
    """
    f = "debias"
    beta = _checks.beta(f, "beta", beta)
    step = _checks.step(f, step)
    kind = _checks.array_kind(average)
    if kind not in ("numpy", "cupy"):
        if kind == "other" and isinstance(average, (int, float, np.floating)) \
                and not isinstance(average, bool):
            return average / (1.0 - beta**step)
        raise TypeError(f"{f}: average must be a NumPy or CuPy array or a number, not "
                        f"{type(average).__name__}")
    # A Python float keeps the array's dtype (NEP 50), so float32 stays float32.
    return average * (1.0 / (1.0 - beta**step))


def function(name: str) -> Callable[..., None]:
    """``fo.<variant>_`` by name (``"adam_"``), generated on first use for a rule registered
    after ``import fusedopt``."""
    found = FUNCTIONS.get(name)
    if found is None:
        variant = VARIANTS.get(name[:-1]) if name.endswith("_") else None
        if variant is None:
            raise AttributeError(f"fusedopt has no update function {name!r}; the update "
                                 f"functions are {sorted(v + '_' for v in VARIANTS)}")
        found = FUNCTIONS[name] = make_function(variant)
    return found


def __getattr__(name: str):
    if name.endswith("_") and not name.startswith("_"):
        return function(name)
    raise AttributeError(f"module 'fusedopt.functional' has no attribute {name!r}")


__all__ = [*sorted(FUNCTIONS), "FUNCTIONS", "debias", "docstring", "function",
           "generated_source", "make_function", "make_functions"]
