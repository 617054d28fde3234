"""Stateful optimizers: the base class, checkpoints, and the classes generated from the registry.

============  =================================================================
``base``      :class:`Optimizer`: groups, schedules, clipping, non-finite steps
``groups``    parameter groups: arenas or lists, their rule and state
``checkpoint``  ``state_dict``/``load_state_dict``, atomic ``save``/``load``
``classes``   ``SGD``, ``Momentum``, ``RMSprop``, ``Adam``, ``AdamW``, ``NAdam``,
              ``Lion`` (one per registered optimizer), ``make_optimizer``
============  =================================================================
"""

from fusedopt.optim.base import Optimizer
from fusedopt.optim.checkpoint import load, save
from fusedopt.optim.classes import (
    CLASSES,
    OPTIMIZERS,
    class_named,
    make_optimizer,
    optimizer_class,
)
from fusedopt.optim.groups import to_host

globals().update(CLASSES)


def __getattr__(name: str):
    """An optimizer class registered after import (``fusedopt.optim.Lion``)."""
    try:
        return class_named(name)
    except AttributeError:
        raise AttributeError(f"module 'fusedopt.optim' has no attribute {name!r}") from None


__all__ = ["CLASSES", "OPTIMIZERS", "Optimizer", "class_named", "load", "make_optimizer",
           "optimizer_class", "save", "to_host", *sorted(CLASSES)]
