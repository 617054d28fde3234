"""The ``"cupy"`` backend: CUDA kernels generated from the same scalar rules.

Each rule's Python source (:mod:`fusedopt.kernels.rules`) is translated, from
its AST, into a CUDA C++ ``__device__`` function; nothing is written a second
time in C, so the GPU and CPU backends cannot drift apart. The translator
knows the subset the rules use: assignments, arithmetic, comparisons, ``and``/
``or``/``not``, conditional expressions, ``sqrt``/``abs``/``min``/``max``/
``exp``/``log``, and numeric literals typed to the compute type (``0.5f`` for
float32) so that float32 math stays float32. Anything else is a
``NotImplementedError`` naming the construct and the line.

Two kernels wrap the device function in every translation unit:

``fusedopt_<rule>_<dtype>``       a grid-stride loop, one element per step;
``fusedopt_<rule>_<dtype>_vec``   the same with 128-bit loads and stores
                                  (``float4``/``double2``) and a scalar tail, used
                                  when every array is 16-byte aligned.

Kernels are compiled by ``cupy.RawKernel`` and memoised per (rule, dtype,
device, variant); they launch on CuPy's current stream, with the step's
scalars passed by value: no host synchronisation, no host-to-device copy.
CuPy is imported only when this backend is used.
"""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
from functools import cache

import numpy as np

from fusedopt import config
from fusedopt.kernels.rules import RULES, Rule

NAME = "cupy"

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_VEC = {np.dtype(np.float32): ("float4", 4, ("x", "y", "z", "w")),
        np.dtype(np.float64): ("double2", 2, ("x", "y"))}
_FUNCS = {  # Python name -> (float32 CUDA name, float64 CUDA name)
    "sqrt": ("sqrtf", "sqrt"), "abs": ("fabsf", "fabs"), "fabs": ("fabsf", "fabs"),
    # fmin/fmax return the other operand for a NaN where Python's min/max depend on the
    # order: rules that may see NaN should not rely on min/max to propagate it.
    "min": ("fminf", "fmin"), "max": ("fmaxf", "fmax"), "exp": ("expf", "exp"),
    "log": ("logf", "log"),
}
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_CMPOPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
           ast.NotEq: "!="}


def is_available() -> tuple[bool, str]:
    """CuPy importable and at least one CUDA device usable."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed: pip install 'fusedopt[cuda13]' (or [cuda12])"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, or a driver older than the CUDA runtime
        return False, f"CuPy {cupy.__version__} is installed but no CUDA device is usable ({exc})"
    if count == 0:
        return False, f"CuPy {cupy.__version__} is installed but there is no CUDA device"
    return True, f"CuPy {cupy.__version__}, {count} CUDA device(s)"


def _dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in _CTYPE:
        raise ValueError(f"dtype={dtype} is not supported by the CUDA backend; use float32 or "
                         "float64")
    return dtype


def _rule(rule) -> Rule:
    if isinstance(rule, Rule):
        return rule
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is not a rule; choose one of {sorted(RULES)}")
    return RULES[rule]


class _Translator:
    """Python AST of one element rule -> the body of a CUDA C++ device function."""

    def __init__(self, rule: Rule, dtype: np.dtype):
        self.rule = rule
        self.ctype = _CTYPE[dtype]
        self.f32 = dtype == np.float32
        self.declared = set(rule.arrays) | set(rule.scalars)

    def fail(self, node, what: str):
        raise NotImplementedError(
            f"rule {self.rule.name!r}, line {getattr(node, 'lineno', '?')}: {what} cannot be "
            "translated to CUDA (supported: assignments, + - * /, comparisons, and/or/not, "
            "x if c else y, sqrt/abs/min/max/exp/log, numeric literals)")

    def literal(self, node, value) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        if not isinstance(value, (int, float)):
            self.fail(node, f"the constant {value!r}")
        value = float(value)
        if not math.isfinite(value):
            self.fail(node, f"the non-finite constant {value!r}")
        text = repr(value)
        if "." not in text and "e" not in text:
            text += ".0"
        return text + ("f" if self.f32 else "")

    def expr(self, node) -> str:
        if isinstance(node, ast.Name):
            if node.id not in self.declared:
                self.fail(node, f"the name {node.id!r} (not an argument or an earlier local)")
            return node.id
        if isinstance(node, ast.Constant):
            return self.literal(node, node.value)
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                self.fail(node, f"the operator {type(node.op).__name__}")
            return f"({self.expr(node.left)} {op} {self.expr(node.right)})"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return f"(-{self.expr(node.operand)})"
            if isinstance(node.op, ast.UAdd):
                return self.expr(node.operand)
            if isinstance(node.op, ast.Not):
                return f"(!{self.truth(node.operand)})"
            self.fail(node, f"the operator {type(node.op).__name__}")
        if isinstance(node, ast.Compare):
            if len(node.ops) != 1:
                self.fail(node, "a chained comparison")
            op = _CMPOPS.get(type(node.ops[0]))
            if op is None:
                self.fail(node, f"the comparison {type(node.ops[0]).__name__}")
            return f"({self.expr(node.left)} {op} {self.expr(node.comparators[0])})"
        if isinstance(node, ast.BoolOp):
            # Python's `and`/`or` return an operand, C's && and || return 0 or 1: they agree
            # only as conditions, so that is the one place they are allowed (see truth()).
            self.fail(node, "`and`/`or` used as a value (use it in a condition)")
        if isinstance(node, ast.IfExp):
            return (f"({self.truth(node.test)} ? {self.expr(node.body)} : "
                    f"{self.expr(node.orelse)})")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
                self.fail(node, "this call")
            name = _FUNCS[node.func.id][0 if self.f32 else 1]
            expected = 2 if node.func.id in ("min", "max") else 1
            if len(node.args) != expected:
                self.fail(node, f"{node.func.id} with {len(node.args)} arguments")
            return f"{name}({', '.join(self.expr(a) for a in node.args)})"
        self.fail(node, f"a {type(node).__name__} expression")

    def truth(self, node) -> str:
        """``node`` as a C condition."""
        if isinstance(node, ast.BoolOp):
            joiner = " && " if isinstance(node.op, ast.And) else " || "
            return "(" + joiner.join(self.truth(v) for v in node.values) + ")"
        text = self.expr(node)
        if isinstance(node, ast.Compare) or (
                isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)):
            return text
        return f"({text} != {self.literal(node, 0)})"

    def body(self, function: ast.FunctionDef) -> list[str]:
        lines = []
        statements = function.body
        if (statements and isinstance(statements[0], ast.Expr)
                and isinstance(statements[0].value, ast.Constant)):
            statements = statements[1:]  # the docstring
        for node in statements:
            if isinstance(node, ast.Assign):
                if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                    self.fail(node, "an assignment to anything but one name")
                name = node.targets[0].id
                value = self.expr(node.value)
                if name in self.declared:
                    lines.append(f"{name} = {value};")
                else:  # not const: a later statement may assign it again
                    lines.append(f"{self.ctype} {name} = {value};")
                    self.declared.add(name)
            elif isinstance(node, ast.Return):
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                if len(values) != len(self.rule.writes):
                    self.fail(node, f"returning {len(values)} values for "
                                    f"{len(self.rule.writes)} written arrays")
                # Evaluate every output before storing any: the outputs may alias inputs.
                for k, value in enumerate(values):
                    lines.append(f"const {self.ctype} out{k} = {self.expr(value)};")
                for k, name in enumerate(self.rule.writes):
                    lines.append(f"*new_{name} = out{k};")
            else:
                self.fail(node, f"a {type(node).__name__} statement")
        return lines


def function_name(rule, dtype) -> str:
    """The kernel's name: ``fusedopt_<rule>_<dtype>`` (e.g. ``fusedopt_adam_float32``)."""
    return f"fusedopt_{_rule(rule).name}_{_dtype(dtype).name}"


def device_function(rule, dtype) -> str:
    """The rule as a CUDA C++ ``__device__`` function (inputs by value, outputs by pointer)."""
    rule, dtype = _rule(rule), _dtype(dtype)
    tree = ast.parse(textwrap.dedent(inspect.getsource(rule.element)))
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
    # Mutable copies: the rules reassign their arguments (e.g. `param = param * scale`).
    ctype = _CTYPE[dtype]
    params = [f"{ctype} {name}" for name in (*rule.arrays, *rule.scalars)]
    params += [f"{ctype}* __restrict__ new_{name}" for name in rule.writes]
    body = _Translator(rule, dtype).body(function)
    return (f"// {rule.name}: translated from fusedopt.kernels.rules.{rule.name}\n"
            f"__device__ __forceinline__ void {function_name(rule, dtype)}_element(\n    "
            + ",\n    ".join(params) + ") {\n    " + "\n    ".join(body) + "\n}\n")


def _kernel_params(rule: Rule, ctype: str) -> str:
    arrays = [f"{'' if name in rule.writes else 'const '}{ctype}* __restrict__ {name}"
              for name in rule.arrays]
    scalars = [f"const {ctype} {name}" for name in rule.scalars]
    return ",\n    ".join([*arrays, *scalars, "const long long n"])


def _element_call(rule: Rule, name: str, index: str, suffix: str = "") -> str:
    reads = [f"{a}{suffix}" if suffix else f"{a}[{index}]" for a in rule.arrays]
    writes = [f"&{w}{suffix}" if suffix else f"&{w}[{index}]" for w in rule.writes]
    return f"{name}_element({', '.join([*reads, *rule.scalars, *writes])});"


def cuda_source(rule, dtype) -> str:
    """The complete CUDA C++ translation unit the CuPy backend compiles for ``rule`` and ``dtype``.

    It holds the translated device function and two ``extern "C" __global__``
    kernels: ``fusedopt_<rule>_<dtype>`` (grid-stride, one element at a time)
    and ``fusedopt_<rule>_<dtype>_vec`` (128-bit loads and stores, for 16-byte
    aligned arrays). Kernel arguments: the rule's arrays (in order), its
    scalars (by value, in the arrays' dtype), then ``n``, the element count.
    """
    rule, dtype = _rule(rule), _dtype(dtype)
    name = function_name(rule, dtype)
    ctype = _CTYPE[dtype]
    vec_type, lanes, fields = _VEC[dtype]
    params = _kernel_params(rule, ctype)
    grid_stride = ("const long long stride = (long long)blockDim.x * gridDim.x;\n"
                   "    const long long first = (long long)blockIdx.x * blockDim.x + "
                   "threadIdx.x;\n")
    loads = "\n".join(
        f"        {'' if a in rule.writes else 'const '}{vec_type} {a}_v = "
        f"reinterpret_cast<{'' if a in rule.writes else 'const '}{vec_type}*>({a})[j];"
        for a in rule.arrays)
    # Each lane reads `<array>_v.<field>` and writes through `&<array>_v.<field>`.
    lane_calls = "\n".join("        " + _element_call(rule, name, "", f"_v.{f}") for f in fields)
    stores = "\n".join(f"        reinterpret_cast<{vec_type}*>({w})[j] = {w}_v;"
                       for w in rule.writes)
    return (
        f"// Generated by fusedopt.backends.cupy_cuda from the rule {rule.name!r} for "
        f"{dtype.name}; do not edit.\n"
        + device_function(rule, dtype)
        + f'\nextern "C" __global__ void {name}(\n    {params}) {{\n'
        + f"    {grid_stride}"
        + "    for (long long i = first; i < n; i += stride) {\n"
        + f"        {_element_call(rule, name, 'i')}\n"
        + "    }\n}\n"
        + f'\nextern "C" __global__ void {name}_vec(\n    {params}) {{\n'
        + f"    // {lanes} elements per 128-bit load; the arrays are 16-byte aligned here.\n"
        + f"    {grid_stride}"
        + f"    const long long n_vec = n / {lanes};\n"
        + "    for (long long j = first; j < n_vec; j += stride) {\n"
        + loads + "\n" + lane_calls + "\n" + stores + "\n    }\n"
        + f"    for (long long i = n_vec * {lanes} + first; i < n; i += stride) {{\n"
        + f"        {_element_call(rule, name, 'i')}\n"
        + "    }\n}\n"
    )


def kernel_names(rule, dtype) -> tuple[str, str]:
    """(scalar kernel, 128-bit kernel) names in :func:`cuda_source`."""
    name = function_name(rule, dtype)
    return name, name + "_vec"


def lanes(dtype) -> int:
    """Elements per 128-bit load in the ``_vec`` kernel."""
    return _VEC[_dtype(dtype)][1]


def use_vector_kernel(pointers) -> bool:
    """Whether every array starts on a 16-byte boundary (then 128-bit access is legal)."""
    return config.CUDA_VECTOR_LOADS and all(p % 16 == 0 for p in pointers)


@cache
def _kernel(rule_name: str, dtype_name: str, device_id: int, vector: bool):
    """The compiled kernel, memoised per (rule, dtype, device, variant)."""
    import cupy

    source = cuda_source(rule_name, dtype_name)
    scalar_name, vector_name = kernel_names(rule_name, dtype_name)
    with cupy.cuda.Device(device_id):
        kernel = cupy.RawKernel(source, vector_name if vector else scalar_name,
                                options=("--std=c++17",))
        kernel.compile()
    return kernel


@cache
def _multiprocessors(device_id: int) -> int:
    import cupy

    return cupy.cuda.runtime.getDeviceProperties(device_id)["multiProcessorCount"]


def launch_config(n: int, vector: bool, dtype, multiprocessors: int) -> tuple[int, int]:
    """(blocks, threads) for ``n`` elements: enough blocks to fill the GPU, grid-stride beyond."""
    threads = config.CUDA_THREADS_PER_BLOCK
    work = -(-n // lanes(dtype)) if vector else n
    blocks = max(1, min(-(-work // threads), multiprocessors * config.CUDA_BLOCKS_PER_SM))
    return blocks, threads


def prepare(rule: Rule, hyper: dict, dtype) -> tuple:
    """The step's scalars in the arrays' dtype, passed to the kernel by value."""
    to = np.dtype(dtype).type
    return tuple(to(s) for s in rule.host_scalars(**hyper))


def launch(rule: Rule, arrays: tuple, scalars: tuple) -> None:
    """Launch ``rule`` over ``arrays`` (CuPy, one device) on the current stream; no sync."""
    first = arrays[0]
    n = first.size
    if n == 0:
        return
    dtype = first.dtype
    device_id = first.device.id
    vector = use_vector_kernel([a.data.ptr for a in arrays])
    kernel = _kernel(rule.name, dtype.name, device_id, vector)
    blocks, threads = launch_config(n, vector, dtype, _multiprocessors(device_id))
    import cupy

    with cupy.cuda.Device(device_id):
        kernel((blocks,), (threads,), (*arrays, *scalars, np.int64(n)))


def update(rule: Rule, arrays: tuple, hyper: dict) -> None:
    """Launch ``rule`` over ``arrays`` (checked CuPy arrays) on the current stream."""
    launch(rule, arrays, prepare(rule, hyper, arrays[0].dtype))


@cache
def _sum_of_squares_kernel():
    import cupy

    return cupy.ReductionKernel("T x", "float64 total", "(double)x * (double)x", "a + b",
                                "total = a", "0", "fusedopt_sum_of_squares")


def sum_of_squares(array):
    """``sum(x*x)`` in float64, as a 0-d device array: no host synchronisation until read."""
    import cupy

    with cupy.cuda.Device(array.device.id):
        return _sum_of_squares_kernel()(array.reshape(-1))
