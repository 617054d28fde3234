"""The Rule registry: everything fusedopt knows about an update rule, in one place.

A :class:`Rule` holds the element rule (the math, written once), its host
scalars, its arrays (and which are state, and which are never negative), its
hyperparameters (:class:`Hyper`: default, valid range, one line of
documentation), whether it needs the step count, a typical learning rate, the
stateful optimizer class it gives, and its equivalent in torch.optim.

Every surface is derived from the registry: argument checking, the functional
wrappers (``fo.adam_``), the optimizer classes (``fo.Adam``) and their state,
the planner's state slots, the command line's choices, the benchmarks and the
demo. A new rule is one :func:`register` call in :mod:`fusedopt.kernels.rules`
(plus its oracle in :mod:`fusedopt.kernels.reference` and a row in the tests'
table).

A :class:`Variant` is a named use of a rule with some hyperparameters fixed or
other defaults (``adamw`` is ``adam`` with ``decoupled_weight_decay=True`` and
``weight_decay=1e-2``). A rule can also be the *switch* of another rule's
optimizers: ``amsgrad`` declares ``switch_of=("adam", "amsgrad")``, so
``fo.Adam(..., amsgrad=True)`` and ``fo.AdamW(..., amsgrad=True)`` run it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fusedopt.kernels import language


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of a hyperparameter that has none (``lr`` of ``sgd_``): the caller must give it.
REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Hyper:
    """One public hyperparameter: its default, its valid values and one line of documentation.

    ``kind`` is ``"real"`` (a finite float in ``[lo, hi]``, ends open where
    asked), ``"flag"`` (True or False) or ``"optional"`` (None, or a real as
    for ``"real"``).
    """

    name: str
    default: Any
    doc: str
    kind: str = "real"
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    symbol: str = ""  # LaTeX, for the docs

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def range_text(self) -> str:
        """The valid values in words, e.g. ``in [0, 1)``."""
        if self.kind == "flag":
            return "True or False"
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        text = f"in {'(' if self.lo_open or self.lo is None else '['}{lo}, {hi}" \
               f"{')' if self.hi_open or self.hi is None else ']'}"
        return text + (", or None" if self.kind == "optional" else "")


class ScalarRangeError(ValueError):
    """Hyperparameters whose step scalars cannot be used (beyond the compute dtype's range, or
    a decay that flips the parameters' sign). The message has no function name: the caller
    (``fo.adam_``, ``opt.step``) adds its own."""


def real(name: str, default, doc: str, *, lo: float | None = 0.0, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False, symbol: str = "") -> Hyper:
    """A real hyperparameter (``>= 0`` unless said otherwise)."""
    return Hyper(name, default, doc, "real", lo, hi, lo_open, hi_open, symbol)


def beta(name: str, default: float, doc: str, symbol: str = r"\beta") -> Hyper:
    """A decay rate in ``[0, 1)``."""
    return Hyper(name, default, doc, "real", 0.0, 1.0, False, True, symbol)


def flag(name: str, default: bool, doc: str) -> Hyper:
    """A boolean switch."""
    return Hyper(name, default, doc, "flag")


def optional(name: str, default, doc: str, *, lo: float | None = 0.0, hi: float | None = None,
             symbol: str = "") -> Hyper:
    """None (documented meaning), or a real in ``[lo, hi]``."""
    return Hyper(name, default, doc, "optional", lo, hi, False, False, symbol)


#: Every optimizer rule takes it: the gradient is used as ``grad * grad_scale`` (a clip
#: factor or an inverse loss scale) inside the one pass, so nothing rewrites the gradient.
GRAD_SCALE = real("grad_scale", 1.0, "the gradient is used as grad * grad_scale (a clip "
                  "factor, or 1/loss-scale), at no extra pass over memory", lo=None)

#: Documentation of the arrays the rules share.
PARAM_DOC = "parameters, updated in place"
GRAD_DOC = "gradient of the cost with respect to param; only read"


@dataclass(frozen=True)
class Rule:
    """An element rule and everything that is known about it.

    Attributes:
        name: the rule's name (``"adam"``); its functional wrapper is ``name + "_"``.
        element: the scalar function, written in the rule language.
        host_scalars: public hyperparameters (and ``step``) -> the element's scalars,
            in order, computed once per call in float64.
        arrays: the per-element arguments, in order; optimizer rules start with
            ``param, grad`` and the rest is their state.
        writes: the arrays the element returns new values for, in order.
        scalars: the element's other arguments (filled by ``host_scalars``).
        hyper: the public hyperparameters, in signature order.
        needs_step: whether the 1-based ``step`` is an argument.
        typical_lr: a learning rate that trains a small dense network well (the
            demo's and the benchmarks' default).
        array_docs: one line per array.
        nonnegative: state arrays that can never be negative (second moments).
        optimizer: the class name of its stateful optimizer (``"Adam"``), if any.
        switch_of: ``(rule, flag)``: this rule runs when ``flag`` is set on that
            rule's optimizers (AMSGrad is Adam's ``amsgrad=True``).
        torch_equivalent: checked hyperparameters -> ``(torch.optim class name,
            keyword arguments)`` of the same update, or None where torch has none.
        device_scalars: whether ``host_scalars`` also takes device arrays for ``step``,
            ``lr`` and ``grad_scale`` (elementwise arithmetic on them, never a host read),
            so a step's scalars can be computed on the device from a device step count:
            the capturable step of :mod:`fusedopt.torch`.
        specialised: scalars whose values 0 and 1 get a threaded CPU loop of their own
            over 16-bit storage (large arrays), the value written into the code, not read
            (LLVM then drops a multiplication by 1, and the other side of a flag's
            branch); the results are the same bits. A neutral ``grad_scale`` or
            ``param_scale`` is the common case, and on 16-bit storage, where a loop is
            bound by its conversions and arithmetic, each dropped operation shows.
    """

    name: str
    element: Callable[..., tuple]
    host_scalars: Callable[..., tuple[float, ...]]
    arrays: tuple[str, ...]
    writes: tuple[str, ...]
    scalars: tuple[str, ...]
    hyper: tuple[Hyper, ...]
    needs_step: bool = False
    typical_lr: float | None = None
    array_docs: Mapping[str, str] = field(default_factory=dict)
    nonnegative: tuple[str, ...] = ()
    optimizer: str | None = None
    switch_of: tuple[str, str] | None = None
    torch_equivalent: Callable[[dict], tuple[str, dict] | None] | None = None
    device_scalars: bool = False
    specialised: tuple[str, ...] = ()

    @property
    def doc(self) -> str:
        """The element rule's docstring: the update's equations."""
        return inspect.getdoc(self.element) or ""

    @property
    def is_optimizer_rule(self) -> bool:
        """Whether it updates parameters from gradients (``ewa`` does not)."""
        return self.arrays[:2] == ("param", "grad")

    @property
    def state(self) -> tuple[str, ...]:
        """The state arrays an optimizer keeps per parameter, in order."""
        return self.arrays[2:] if self.is_optimizer_rule else ()

    @property
    def hyper_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hyper)

    @property
    def defaults(self) -> dict[str, Any]:
        """Hyperparameter -> default (``REQUIRED`` where there is none)."""
        return {h.name: h.default for h in self.hyper}

    @property
    def bytes_per_element_factor(self) -> int:
        """Streams moved per element: every array read once, written ones written once."""
        return len(self.arrays) + len(self.writes)


@dataclass(frozen=True)
class Variant:
    """A named use of a rule: some hyperparameters fixed, some defaults changed.

    Every rule is a variant of itself; ``adamw`` is ``adam`` with
    ``decoupled_weight_decay=True`` and ``weight_decay=1e-2``.
    """

    name: str
    rule: Rule
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    optimizer: str | None = None
    doc: str = ""

    @property
    def hyper(self) -> tuple[Hyper, ...]:
        """The rule's hyperparameters less the fixed ones, with this variant's defaults."""
        out = []
        for h in self.rule.hyper:
            if h.name in self.fixed:
                continue
            if h.name in self.defaults:
                h = Hyper(h.name, self.defaults[h.name], h.doc, h.kind, h.lo, h.hi, h.lo_open,
                          h.hi_open, h.symbol)
            out.append(h)
        return tuple(out)

    @property
    def switches(self) -> dict[str, Rule]:
        """Flag -> the rule it selects on this variant's optimizers (``{"amsgrad": ...}``)."""
        return {r.switch_of[1]: r for r in RULES.values()
                if r.switch_of is not None and r.switch_of[0] == self.rule.name}


RULES: dict[str, Rule] = {}
VARIANTS: dict[str, Variant] = {}


def register(*, arrays: Mapping[str, str], writes: tuple[str, ...], host_scalars: Callable,
             hyper: tuple[Hyper, ...], needs_step: bool = False,
             typical_lr: float | None = None, nonnegative: tuple[str, ...] = (),
             optimizer: str | None = None, switch_of: tuple[str, str] | None = None,
             torch_equivalent: Callable | None = None, device_scalars: bool = False,
             specialised: tuple[str, ...] = ()):
    """Register the decorated element rule (see :class:`Rule` for the arguments).

    ``arrays`` maps each per-element argument to one line of documentation, in
    the element's argument order. The element is checked against the rule
    language (:func:`fusedopt.kernels.language.validate`) and its host
    scalars against its hyperparameters, so a rule no backend can run is
    refused here, at import.
    """
    def decorate(element: Callable) -> Callable:
        name = element.__name__
        params = tuple(inspect.signature(element).parameters)
        names = tuple(arrays)
        if params[: len(names)] != names:
            raise TypeError(f"rule {name!r}: its arrays {names} must be its first arguments, "
                            f"in order (it takes {params})")
        if not writes or not set(writes) <= set(names) or len(set(writes)) != len(writes):
            raise TypeError(f"rule {name!r}: writes {writes} must be one or more distinct arrays "
                            f"of {names}")
        for h in hyper:
            _check_hyper(name, h)
        if not set(nonnegative) <= set(names) - {"param", "grad"}:
            raise TypeError(f"rule {name!r}: nonnegative {nonnegative} must name state arrays")
        if name in RULES or name in VARIANTS:
            raise TypeError(f"rule {name!r} is registered twice")
        language.validate(element, params, len(writes))
        accepted = set(inspect.signature(host_scalars).parameters)
        wanted = {h.name for h in hyper} | ({"step"} if needs_step else set())
        if accepted != wanted:
            raise TypeError(f"rule {name!r}: host_scalars takes {sorted(accepted)} but the "
                            f"hyperparameters are {sorted(wanted)}")
        if not set(specialised) <= set(params[len(names):]):
            raise TypeError(f"rule {name!r}: specialised {specialised} must name its scalars")
        rule = Rule(name, element, host_scalars, names, tuple(writes), params[len(names):],
                    tuple(hyper), needs_step, typical_lr, MappingProxyType(dict(arrays)),
                    tuple(nonnegative), optimizer, switch_of, torch_equivalent,
                    device_scalars, tuple(specialised))
        RULES[name] = rule
        VARIANTS[name] = Variant(name, rule, optimizer=optimizer, doc=rule.doc)
        return element

    return decorate


def _check_hyper(rule: str, h: Hyper) -> None:
    """Defaults and bounds are plain Python values (they are written into generated code)."""
    import math

    where = f"rule {rule!r}, hyperparameter {h.name!r}"
    for bound in (h.lo, h.hi):
        if bound is not None and (type(bound) not in (int, float) or not math.isfinite(bound)):
            raise TypeError(f"{where}: bounds are finite Python numbers or None, not {bound!r}")
    d = h.default
    if d is REQUIRED or (h.kind == "optional" and d is None):
        return
    if h.kind == "flag":
        if type(d) is not bool:
            raise TypeError(f"{where}: a flag's default is True or False, not {d!r}")
    elif type(d) not in (int, float) or not math.isfinite(d):
        raise TypeError(f"{where}: the default must be a finite Python float, not {d!r}")


def variant(name: str, *, of: str, fixed: Mapping[str, Any] | None = None,
            defaults: Mapping[str, Any] | None = None, optimizer: str | None = None,
            doc: str = "") -> Variant:
    """Register ``name`` as ``of`` with ``fixed`` hyperparameters and other ``defaults``."""
    rule = RULES[of]
    fixed, defaults = dict(fixed or {}), dict(defaults or {})
    unknown = (set(fixed) | set(defaults)) - set(rule.hyper_names)
    if unknown:
        raise TypeError(f"variant {name!r}: {sorted(unknown)} are not hyperparameters of {of!r}")
    if name in VARIANTS:
        raise TypeError(f"variant {name!r} is registered twice")
    VARIANTS[name] = Variant(name, rule, MappingProxyType(fixed), MappingProxyType(defaults),
                             optimizer, doc or rule.doc)
    return VARIANTS[name]


def optimizer_names() -> dict[str, tuple[Variant, dict[str, bool]]]:
    """The names ``make_optimizer``, the planner and the CLI take -> (variant, switches set).

    One per variant with an optimizer class (``"adam"``, ``"adamw"``, ...), and one per
    switch rule (``"amsgrad"``: ``adam`` with ``amsgrad=True``).
    """
    out: dict[str, tuple[Variant, dict[str, bool]]] = {}
    for v in VARIANTS.values():
        if v.optimizer is not None:
            out[v.name] = (v, {})
    for r in RULES.values():
        if r.switch_of is not None and r.name not in out:
            owner, switch = r.switch_of
            out[r.name] = (VARIANTS[owner], {switch: True})
    return out


def optimizer_rule(name: str) -> Rule:
    """The rule an optimizer name (see :func:`optimizer_names`) runs."""
    names = optimizer_names()
    if name not in names:
        raise ValueError(f"optimizer={name!r}; choose one of {sorted(names)}")
    variant_, switches = names[name]
    on = [s for s, value in switches.items() if value]
    return variant_.switches[on[0]] if on else variant_.rule
