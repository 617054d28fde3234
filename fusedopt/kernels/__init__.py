"""The math, and only the math: the rule language, the Rule registry, the rules, the oracle.

Nothing here imports from the rest of fusedopt: the backends and every public
surface are built on top of it. Importing this package registers every rule.
"""

from fusedopt.kernels import rules as _rules  # noqa: F401  (registers the rules)
from fusedopt.kernels.registry import (
    REQUIRED,
    RULES,
    VARIANTS,
    Hyper,
    Rule,
    Variant,
    optimizer_names,
    optimizer_rule,
)

__all__ = ["REQUIRED", "RULES", "VARIANTS", "Hyper", "Rule", "Variant", "optimizer_names",
           "optimizer_rule"]
