"""The optimizer classes, one per registered optimizer, generated from the Rule registry.

``fo.SGD``, ``fo.Momentum``, ``fo.RMSprop``, ``fo.Adam``, ``fo.AdamW``,
``fo.NAdam`` and ``fo.Lion`` (and any rule registered later with an
``optimizer=`` name) are subclasses of :class:`~fusedopt.optim.base.Optimizer`
with an explicit ``__init__`` signature (every hyperparameter with its
default, then the common options) and a docstring carrying the update's
equations. A rule that is another rule's switch (AMSGrad, ``switch_of=("adam",
"amsgrad")``) becomes a flag of that rule's classes: ``fo.Adam(..., amsgrad=True)``.
"""

from __future__ import annotations

import textwrap

from fusedopt.kernels import VARIANTS, Variant, optimizer_names
from fusedopt.kernels.registry import REQUIRED
from fusedopt.optim.base import Optimizer

_COMMON = [
    ("schedule", "None", "any schedule(t) -> lr (fusedopt.schedules), evaluated by epoch or by "
                         "step; overrides lr"),
    ("by", "'epoch'", "'epoch' (t = opt.epoch; call opt.next_epoch() after each pass) or "
                      "'step'"),
    ("max_grad_norm", "None", "clip the gradients by their global norm, inside the fused step"),
    ("nonfinite", "None", "'skip' or 'raise' on NaN/inf gradients (one extra read), or None"),
    ("backend", "None", "None (by array type), 'numba', 'cupy' or 'numpy'"),
    ("state_dtype", "None", "the state's storage: 'float32' or 'bfloat16'; None keeps the "
                            "parameters' dtype (float32 for bfloat16/float16 parameters)"),
    ("master_weights", "False", "keep a float32 master copy of each bfloat16/float16 "
                                "parameter: the update runs on it and writes both in one pass"),
    ("stochastic_rounding", "False", "round bfloat16/float16 stores stochastically (unbiased; "
                                     "the bits hash (seed, step, index, array), no RNG state)"),
    ("seed", "0", "the stochastic rounding's seed, an int in [0, 2**64)"),
    ("comm", "None", "a communicator (fusedopt.distributed.init()): average the ranks' "
                     "gradients, as data-parallel training does"),
    ("shard_state", "False", "with a ParamArena: ZeRO-1, each rank holding 1/W of the state "
                             "(and master copy); see fusedopt.optim.parallel"),
    ("capturable", "False", "clip, skip and count steps on the device, with no host sync (a "
                            "CUDA graph can capture the step); see fusedopt.optim.device_step"),
]
_FORWARDED = ("schedule", "by", "max_grad_norm", "nonfinite", "backend", "state_dtype",
              "master_weights", "stochastic_rounding", "seed", "capturable")


def _docstring(cls_name: str, v: Variant, specs) -> str:
    lines = [textwrap.dedent(v.doc).strip(), "",
             "``params``: a ParamArena (``opt.step()``), a list of arrays "
             "(``opt.step(grads)``) or torch-style group dicts.", "", "Args:"]
    for h in specs:
        default = "required" if h.required else f"default {h.default!r}"
        lines.append(f"    {h.name}: {h.doc}; {h.range_text()} ({default}).")
    for name, default, doc in _COMMON:
        lines.append(f"    {name}: {doc} (default {default}).")
    return "\n".join(lines)


def _init_source(name: str, v: Variant, specs) -> str:
    """Source of the ``__init__`` called ``name``: every hyperparameter, then the options."""
    params = ["self", "params", "*"]
    for h in specs:
        annotation = {"flag": "bool", "optional": "float | None"}.get(h.kind, "float")
        params.append(f"{h.name}: {annotation}"
                      + ("" if h.default is REQUIRED else f" = {h.default!r}"))
    # The variant's fixed values are accepted as they are (AdamW(decoupled_weight_decay=True)),
    # as older fusedopt did; another value is refused by Optimizer.__init__.
    params += [f"{k}: bool = {value!r}" for k, value in v.fixed.items()]
    params += ["schedule=None", "by: str = 'epoch'", "max_grad_norm: float | None = None",
               "nonfinite: str | None = None", "backend: str | None = None",
               "state_dtype: str | None = None", "master_weights: bool = False",
               "stochastic_rounding: bool = False", "seed: int = 0", "comm=None",
               "shard_state: bool = False", "capturable: bool = False"]
    forwarded = [f"{n}={n}" for n in _FORWARDED]
    forwarded += [f"{h.name}={h.name}" for h in specs] + [f"{k}={k}" for k in v.fixed]
    return (f"def {name}({', '.join(params)}) -> None:\n"
            f"    _Optimizer.__init__(self, params, {', '.join(forwarded)})\n\n\n")


def make_classes(pairs: list[tuple[Variant, type[Optimizer]]]) -> list[type[Optimizer]]:
    """Generate the optimizer class of each (variant, base class), compiling every
    ``__init__`` at once."""
    classes = [type(v.optimizer, (base,), {"variant": v, "__module__": "fusedopt.optim"})
               for v, base in pairs]
    source = "".join(_init_source(f"_init_{cls.__name__}", v, cls.hyper_specs())
                     for cls, (v, _) in zip(classes, pairs, strict=True))
    namespace = {"_Optimizer": Optimizer}
    exec(compile(source, "<fusedopt.optim (generated)>", "exec", dont_inherit=True), namespace)
    for cls, (v, _) in zip(classes, pairs, strict=True):
        init = namespace[f"_init_{cls.__name__}"]
        init.__name__ = "__init__"
        init.__qualname__ = f"{cls.__name__}.__init__"
        init.__module__ = "fusedopt.optim"
        cls.__init__ = init
        cls.__doc__ = _docstring(cls.__name__, v, cls.hyper_specs())
        cls.__qualname__ = cls.__name__
    return classes


def make_class(v: Variant, base: type[Optimizer]) -> type[Optimizer]:
    """Generate the optimizer class of variant ``v`` (subclassing ``base``)."""
    return make_classes([(v, base)])[0]


def _generate() -> dict[str, type[Optimizer]]:
    # A variant's class subclasses its rule's own class (AdamW is an Adam): rules first.
    rules = [v for v in VARIANTS.values() if v.optimizer and v.name == v.rule.name]
    classes = dict(zip((v.name for v in rules),
                       make_classes([(v, Optimizer) for v in rules]), strict=True))
    others = [v for v in VARIANTS.values() if v.optimizer and v.name != v.rule.name]
    pairs = [(v, classes.get(v.rule.name, Optimizer)) for v in others]
    classes.update(zip((v.name for v in others), make_classes(pairs) if pairs else [],
                       strict=True))
    return classes


#: variant name -> optimizer class (``"adam"`` -> ``fo.Adam``, ``"adamw"`` -> ``fo.AdamW``)
OPTIMIZERS: dict[str, type[Optimizer]] = _generate()
#: class name -> class, as exported by ``fusedopt``
CLASSES: dict[str, type[Optimizer]] = {cls.__name__: cls for cls in OPTIMIZERS.values()}


def optimizer_class(variant_name: str) -> type[Optimizer]:
    """The class of a variant, generated on first use for a rule registered after
    ``import fusedopt``."""
    cls = OPTIMIZERS.get(variant_name)
    if cls is None:
        variant = VARIANTS.get(variant_name)
        if variant is None or variant.optimizer is None:
            raise ValueError(f"{variant_name!r} has no optimizer class; the classes are "
                             f"{sorted(v.optimizer for v in VARIANTS.values() if v.optimizer)}")
        own = optimizer_class(variant.rule.name) if variant.name != variant.rule.name else None
        cls = OPTIMIZERS[variant_name] = make_class(variant, own or Optimizer)
        CLASSES[cls.__name__] = cls
    return cls


def class_named(name: str) -> type[Optimizer]:
    """The optimizer class called ``name`` (``"Lion"``), generated on first use if needed."""
    if name not in CLASSES:
        for v in VARIANTS.values():
            if v.optimizer == name:
                return optimizer_class(v.name)
        raise AttributeError(name)
    return CLASSES[name]


def make_optimizer(name: str, params, *, lr: float | None = None, **kwargs) -> Optimizer:
    """An optimizer by name: ``"sgd"``, ``"momentum"``, ``"rmsprop"``, ``"adam"``, ``"adamw"``,
    ``"amsgrad"`` (Adam with ``amsgrad=True``), ``"nadam"``, ``"lion"``, ... (every name of
    :func:`fusedopt.kernels.optimizer_names`).

    ``lr=None`` takes the rule's typical learning rate for a small dense network.
    """
    names = optimizer_names()
    if name not in names:
        raise ValueError(f"optimizer={name!r}; choose one of {sorted(names)}")
    variant, switches = names[name]
    if lr is None:
        lr = variant.rule.typical_lr
    return optimizer_class(variant.name)(params, lr=lr, **switches, **kwargs)
