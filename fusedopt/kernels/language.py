"""The rule language: what an element rule may be written in, checked when it is registered.

An element rule is a plain Python function on scalars that every backend runs:
Numba compiles it, the CUDA backend translates its source. So it is written in
the subset both understand, stated here once:

* statements: ``name = expression`` (one name) and a final ``return a, b, ...``
  (one value per array the rule writes); a docstring first;
* expressions: names (arguments and earlier locals), ``+ - * /``, unary ``-``
  and ``+``, one comparison ``< <= > >= == !=``, ``x if c else y``, ``not``,
  and ``and``/``or`` inside a condition (C's ``&&``/``||`` return 0 or 1 where
  Python's return an operand, so they agree only as conditions);
* numeric literals only in comparisons (``x > 0``), and only values float32
  holds exactly (``0``, ``0.5``, ``1024``; not ``0.1``): in arithmetic a Python
  literal is a float64 in Numba and would turn float32 math into float64, and a
  literal float32 cannot hold compares differently on the CPU (in float64) and
  the GPU (rounded to float32); pass such numbers as host scalars instead;
* names (arguments and locals) that do not start with ``_`` (the generated
  code's own names do) and are not C++/CUDA keywords, built-ins or the C
  spelling of a language function;
* calls of the functions in :data:`FUNCTIONS`, imported from this module by
  the rule file.

A rule that steps outside this is refused by :func:`validate` at import, with
the construct and the line named, not later when a backend generates code.

Every function has one meaning on every backend (NaN, signed zeros and
infinities included), pinned to the Python function bound here. The backends
follow IEEE arithmetic (Numba with ``error_model="numpy"``, CUDA): where a rule
run as plain Python on floats would raise (``math.sqrt(-1)``, ``x / 0``,
``log(0)``), the backends give NaN or an infinity instead.

=============  =====  ===========================================================
``sqrt(x)``    1      square root (NaN for x < 0 on the backends)
``abs(x)``     1      absolute value
``min(a, b)``  2      ``b if b < a else a`` (Python's ``min``: ``a`` when either is NaN
                      and ``b`` is not smaller)
``max(a, b)``  2      ``b if b > a else a`` (Python's ``max``)
``maximum``    2      the larger, NaN if either is NaN (``torch.maximum``); ``b`` if equal
``minimum``    2      the smaller, NaN if either is NaN (``torch.minimum``); ``b`` if equal
``copysign``   2      ``|a|`` with the sign of ``b``
``sign(x)``    1      -1, +0 or 1 (``sign(-0.0) = +0``); NaN for NaN (``numpy.sign``)
``exp(x)``     1      e**x
``log(x)``     1      natural logarithm
=============  =====  ===========================================================
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MathFunction:
    """A function a rule may call, and how each backend spells it.

    ``python`` is the meaning, and the object the rule's global name must be
    bound to. ``numba`` is None where Numba compiles calls of ``python``
    natively with the same meaning; otherwise a function of a NumPy dtype
    returning the implementation Numba compiles for arguments of that dtype
    (the Numba backend registers it as an overload of ``python``). ``cuda`` is
    either a pair of C names (float, double) or, for functions C has no exact
    match for, the body of a ``__device__`` helper in the compute type ``T``.
    """

    name: str
    arity: int
    python: Callable
    cuda: tuple[str, str] | str
    doc: str
    numba: Callable[[np.dtype], Callable] | None = None


def _sign(x: float) -> float:
    """numpy.sign of one float: -1, 1, +0 for either zero, NaN for NaN."""
    if x > 0:
        return 1.0
    if x < 0:
        return -1.0
    return 0.0 if x == 0 else x


def _maximum(a: float, b: float) -> float:
    """The larger of two; NaN if either is (the first NaN), as torch.maximum and np.maximum;
    ``b`` when they are equal."""
    if a != a:
        return a
    if b != b:
        return b
    return a if a > b else b


def _minimum(a: float, b: float) -> float:
    """The smaller of two; NaN if either is (the first NaN); ``b`` when they are equal."""
    if a != a:
        return a
    if b != b:
        return b
    return a if a < b else b


def _maximum_for_numba(dtype: np.dtype) -> Callable:
    def maximum(a, b):  # Numba's np.maximum returns a for equal values: not b as NumPy does
        if a != a:
            return a
        if b != b:
            return b
        return a if a > b else b

    return maximum


def _minimum_for_numba(dtype: np.dtype) -> Callable:
    def minimum(a, b):
        if a != a:
            return a
        if b != b:
            return b
        return a if a < b else b

    return minimum


def _sign_for_numba(dtype: np.dtype) -> Callable:
    """``sign`` for Numba in ``dtype`` (Numba's own np.sign keeps the sign of -0.0)."""
    one, zero = dtype.type(1), dtype.type(0)

    def sign(x):
        if x > zero:
            return one
        if x < zero:
            return -one
        if x == zero:
            return zero
        return x

    return sign


FUNCTIONS: dict[str, MathFunction] = {f.name: f for f in (
    MathFunction("sqrt", 1, math.sqrt, ("sqrtf", "sqrt"), "square root"),
    MathFunction("abs", 1, abs, ("fabsf", "fabs"), "absolute value"),
    # C's fminf/fmaxf drop a NaN operand where Python's min/max keep the first one;
    # the helpers below copy Python's comparisons so every backend agrees.
    MathFunction("min", 2, min, "return b < a ? b : a;", "Python's min of two"),
    MathFunction("max", 2, max, "return b > a ? b : a;", "Python's max of two"),
    MathFunction("maximum", 2, _maximum, "return a != a ? a : (b != b ? b : (a > b ? a : b));",
                 "the larger; NaN if either is NaN (torch.maximum)", _maximum_for_numba),
    MathFunction("minimum", 2, _minimum, "return a != a ? a : (b != b ? b : (a < b ? a : b));",
                 "the smaller; NaN if either is NaN (torch.minimum)", _minimum_for_numba),
    MathFunction("copysign", 2, math.copysign, ("copysignf", "copysign"),
                 "|a| with the sign of b"),
    MathFunction("sign", 1, _sign,
                 "return a > (T)0 ? (T)1 : (a < (T)0 ? (T)-1 : (a == (T)0 ? (T)0 : a));",
                 "-1, +0 or 1; NaN for NaN (numpy.sign)", _sign_for_numba),
    MathFunction("exp", 1, math.exp, ("expf", "exp"), "e**x"),
    MathFunction("log", 1, math.log, ("logf", "log"), "natural logarithm"),
)}

# The names a rule file imports from here.
sqrt = math.sqrt
copysign = math.copysign
sign = _sign
maximum = _maximum
minimum = _minimum
exp = math.exp
log = math.log
# abs, min and max are Python's builtins.

BINARY_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
COMPARISONS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
               ast.NotEq: "!="}


#: Names a rule may not use: the generated C++/CUDA would not compile or would mean
#: something else.
RESERVED_NAMES = frozenset("""
    alignas alignof and asm auto bool break case catch char class const constexpr
    const_cast continue decltype default delete do double dynamic_cast else enum explicit
    export extern false float for friend goto if inline int long mutable namespace new
    noexcept not nullptr operator or private protected public register reinterpret_cast
    return short signed sizeof static static_assert static_cast struct switch template this
    throw true try typedef typeid typename union unsigned using virtual void volatile
    wchar_t while threadIdx blockIdx blockDim gridDim warpSize restrict half float2 float4
    double2 sqrtf fabs fabsf copysignf expf logf fmin fmax fminf fmaxf isnan isinf
    """.split()) | frozenset(FUNCTIONS)


class RuleLanguageError(TypeError):
    """An element rule uses something outside the rule language."""


@functools.lru_cache(maxsize=64)
def _file_tree(filename: str, mtime: float) -> ast.Module | None:
    try:
        with open(filename, encoding="utf-8") as f:
            return ast.parse(f.read(), filename)
    except (OSError, SyntaxError, ValueError):
        return None


def function_tree(function: Callable) -> ast.FunctionDef:
    """The AST of ``function``'s own source.

    The file is parsed once (a rule file registers several rules) and the function
    found by its first line; ``inspect.getsource`` (slower: it tokenises to find the
    block) is the fallback for source that is not in a plain file.
    """
    code = function.__code__
    try:
        tree = _file_tree(code.co_filename, os.stat(code.co_filename).st_mtime)
    except OSError:
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and node.name == code.co_name \
                    and (node.decorator_list[0].lineno if node.decorator_list
                         else node.lineno) == code.co_firstlineno:
                return node
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def body_statements(function: ast.FunctionDef) -> list[ast.stmt]:
    """The statements of a rule, without its docstring."""
    statements = function.body
    if (statements and isinstance(statements[0], ast.Expr)
            and isinstance(statements[0].value, ast.Constant)
            and isinstance(statements[0].value.value, str)):
        statements = statements[1:]
    return statements


class _Validator:
    def __init__(self, name: str, arguments: tuple[str, ...], n_writes: int, globals_: dict):
        self.name, self.n_writes, self.globals = name, n_writes, globals_
        self.defined = set(arguments)
        for argument in arguments:
            self.check_name(None, argument)

    def check_name(self, node, name: str) -> None:
        if name.startswith("_") or name in RESERVED_NAMES:
            self.fail(node, f"the name {name!r} (names may not start with '_' or be a C++/CUDA "
                            "keyword, built-in or language function)")

    def fail(self, node, what: str):
        # node is None for an argument name: the rule's own line
        raise RuleLanguageError(
            f"rule {self.name!r}, line {getattr(node, 'lineno', '?')}: {what} is outside the "
            "rule language (fusedopt.kernels.language: assignments, + - * /, comparisons, "
            "x if c else y, and/or/not in conditions, numeric literals in comparisons, and "
            f"the functions {', '.join(FUNCTIONS)})")

    def statements(self, function: ast.FunctionDef) -> None:
        if isinstance(function, ast.AsyncFunctionDef):
            self.fail(function, "an async function")
        statements = body_statements(function)
        if not statements or not isinstance(statements[-1], ast.Return):
            self.fail(function, "a rule that does not end with `return`")
        for node in statements:
            if isinstance(node, ast.Assign):
                if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                    self.fail(node, "an assignment to anything but one name")
                self.check_name(node, node.targets[0].id)
                self.value(node.value)
                self.defined.add(node.targets[0].id)
            elif isinstance(node, ast.Return):
                if node is not statements[-1]:
                    self.fail(node, "a `return` before the last statement")
                values = (node.value.elts if isinstance(node.value, ast.Tuple)
                          else [node.value])
                if node.value is None or len(values) != self.n_writes:
                    self.fail(node, f"returning {0 if node.value is None else len(values)} "
                                    f"values for {self.n_writes} written arrays")
                for value in values:
                    self.value(value)
            else:
                self.fail(node, f"a {type(node).__name__} statement")

    def value(self, node, in_comparison: bool = False) -> None:
        if isinstance(node, ast.Name):
            if node.id not in self.defined:
                self.fail(node, f"the name {node.id!r} (not an argument or an earlier local)")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                self.fail(node, f"the constant {node.value!r}")
            if not math.isfinite(node.value):
                self.fail(node, f"the non-finite constant {node.value!r}")
            if not in_comparison:
                self.fail(node, f"the literal {node.value!r} in arithmetic (a float64 in Numba; "
                                "pass it as a host scalar)")
            if float(np.float32(node.value)) != node.value:
                self.fail(node, f"the literal {node.value!r}, which float32 cannot hold exactly "
                                "(the CPU and the GPU would compare differently; pass it as a "
                                "host scalar)")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in BINARY_OPERATORS:
                self.fail(node, f"the operator {type(node.op).__name__}")
            self.value(node.left)
            self.value(node.right)
        elif isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                self.condition(node.operand)
            elif isinstance(node.op, (ast.USub, ast.UAdd)):
                self.value(node.operand, in_comparison)
            else:
                self.fail(node, f"the operator {type(node.op).__name__}")
        elif isinstance(node, ast.Compare):
            self.condition(node)
        elif isinstance(node, ast.BoolOp):
            self.fail(node, "`and`/`or` used as a value (use it in a condition)")
        elif isinstance(node, ast.IfExp):
            self.condition(node.test)
            self.value(node.body)
            self.value(node.orelse)
        elif isinstance(node, ast.Call):
            self.call(node)
        else:
            self.fail(node, f"a {type(node).__name__} expression")

    def condition(self, node) -> None:
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self.condition(value)
        elif isinstance(node, ast.Compare):
            if len(node.ops) != 1:
                self.fail(node, "a chained comparison")
            if type(node.ops[0]) not in COMPARISONS:
                self.fail(node, f"the comparison {type(node.ops[0]).__name__}")
            self.value(node.left, in_comparison=True)
            self.value(node.comparators[0], in_comparison=True)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.condition(node.operand)
        else:
            self.value(node)

    def call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else ast.unparse(func)
        spec = FUNCTIONS.get(name) if isinstance(func, ast.Name) else None
        if spec is None:
            self.fail(node, f"the call {name}(...)")
        bound = self.globals.get(name, __builtins__.get(name) if isinstance(__builtins__, dict)
                                 else getattr(__builtins__, name, None))
        if bound is not spec.python:
            self.fail(node, f"the call {name}(...) (the name {name!r} is not bound to "
                            f"fusedopt.kernels.language.{name})")
        if node.keywords or len(node.args) != spec.arity:
            self.fail(node, f"{name} with {len(node.args)} positional and "
                            f"{len(node.keywords)} keyword arguments ({spec.arity} expected)")
        for arg in node.args:
            self.value(arg)


def validate(function: Callable, arguments: tuple[str, ...], n_writes: int) -> None:
    """Raise :class:`RuleLanguageError` naming the first construct outside the language."""
    tree = function_tree(function)
    _Validator(function.__name__, arguments, n_writes, function.__globals__).statements(tree)
