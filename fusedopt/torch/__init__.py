"""fusedopt for PyTorch users: ``torch.optim.Optimizer`` subclasses running fusedopt's rules.

``import fusedopt.torch as fot``; ``fot.Adam(model.parameters(), lr=1e-3)`` replaces
``torch.optim.Adam`` (also AdamW, SGD, RMSprop, NAdam, and Lion): the same keywords,
errors, param groups and ``state_dict`` format, ``torch.optim.lr_scheduler`` and
``torch.amp.GradScaler`` compatible. A CPU step is one compiled call per bucket of
tensors (same device, dtypes and step count), not one per tensor.

Importing this module imports torch; ``import fusedopt`` never does.
"""

from __future__ import annotations

from fusedopt.torch.optimizers import SGD, Adam, AdamW, Lion, NAdam, RMSprop

__all__ = ["SGD", "Adam", "AdamW", "Lion", "NAdam", "RMSprop"]
