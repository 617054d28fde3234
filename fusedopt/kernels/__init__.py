"""The math only: each rule written once (``rules``) and its oracle (``reference``)."""

from fusedopt.kernels.rules import RULES, Rule

__all__ = ["RULES", "Rule"]
