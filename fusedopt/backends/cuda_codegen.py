"""CUDA C++ generated from the rules: the translator and the translation units.

Each rule's Python source (:mod:`fusedopt.kernels.rules`) is translated, from
its AST, into a CUDA C++ ``__device__`` function; nothing is written a second
time in C, so the GPU and CPU backends cannot drift apart. The translator
covers exactly the rule language (:mod:`fusedopt.kernels.language`), which is
checked when a rule is registered: the language's functions map to their C
names or to small helpers with Python's meaning (``max``, ``min``, ``sign``),
and literals are typed to the compute type (``0.5f`` for float32) so that
float32 math stays float32.

A call is described by a :class:`~fusedopt.kernels.dtypes.Signature`: each
array's storage type, and the compute type the device function works in.
Every translation unit holds two kernels:

``fusedopt_<rule>_<sig>``       a grid-stride loop, one element per step;
``fusedopt_<rule>_<sig>_vec``   the same with vector loads and stores (128 bits
                                for the widest array: ``float4``/``double2``)
                                and a scalar tail, for suitably aligned arrays.

``<sig>`` is the dtype's name when every array has it (``fusedopt_adam_float32``).
"""

from __future__ import annotations

import ast
import math

import numpy as np

from fusedopt.backends import cuda_lowp
from fusedopt.kernels import language
from fusedopt.kernels.dtypes import ITEMSIZE, LOW_PRECISION, Signature, homogeneous, signature
from fusedopt.kernels.registry import RULES, Rule

# by storage name (and by NumPy dtype, for the compute type); 16-bit arrays are their patterns
CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double", "float32": "float",
         "float64": "double", "bfloat16": "unsigned short", "float16": "unsigned short"}
_XYZW = ("x", "y", "z", "w")
# (storage name, lanes) -> (CUDA vector type, fields)
VECTOR = {("float32", 4): ("float4", _XYZW), ("float32", 2): ("float2", _XYZW[:2]),
          ("float64", 2): ("double2", _XYZW[:2]),
          **{(s, 4): ("ushort4", _XYZW) for s in LOW_PRECISION},
          **{(s, 2): ("ushort2", _XYZW[:2]) for s in LOW_PRECISION}}
MAX_LANES = 4  # 16-bit arrays: 8-byte ushort4 accesses next to float4


def rule_of(rule) -> Rule:
    """A :class:`Rule` from itself or its registered name."""
    if isinstance(rule, Rule):
        return rule
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is not a rule; choose one of {sorted(RULES)}")
    return RULES[rule]


def signature_of(rule: Rule, dtype) -> Signature:
    """A signature from one dtype (every array), a sequence of per-array dtypes, or itself."""
    if isinstance(dtype, Signature):
        return dtype
    try:
        if isinstance(dtype, (list, tuple)):
            return signature(rule.arrays, dtype, writes=rule.writes)
        return homogeneous(rule.arrays, dtype)
    except TypeError as exc:
        raise ValueError(f"dtype={dtype} is not supported by the CUDA backend ({exc}); use "
                         "float32 or float64, or a Signature for 16-bit storage") from None


def kernel_base_name(rule: Rule, sig: Signature) -> str:
    """``fusedopt_<rule>_<float32|float64>`` when homogeneous, else with the signature key."""
    return f"fusedopt_{rule.name}_{sig.compute.name if sig.homogeneous else sig.key}"


def _storages(sig: Signature) -> list[str]:
    """Each array's storage, the master copy (float32) last."""
    return [*sig.storage, *(["float32"] if sig.master else [])]


def lanes(sig: Signature) -> int:
    """Elements per vector access: 16 bytes of the widest array (at most 4)."""
    return min(MAX_LANES, 16 // max(ITEMSIZE[d] for d in _storages(sig)))


def vector_alignments(sig: Signature) -> list[int]:
    """The byte alignment each array (and the master copy, last) needs for the vector kernel."""
    n = lanes(sig)
    return [n * ITEMSIZE[d] for d in _storages(sig)]


class _Translator:
    """Python AST of one element rule -> the body of a CUDA C++ device function."""

    def __init__(self, rule: Rule, compute: np.dtype):
        self.rule = rule
        self.ctype = CTYPE[compute]
        self.f32 = compute == np.float32
        self.declared = set(rule.arrays) | set(rule.scalars)
        self.helpers: dict[str, str] = {}  # language functions that need a helper

    def fail(self, node, what: str):
        raise NotImplementedError(f"rule {self.rule.name!r}, line {getattr(node, 'lineno', '?')}:"
                                  f" {what} cannot be translated to CUDA")

    def literal(self, node, value) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            self.fail(node, f"the constant {value!r}")
        text = repr(float(value))
        if "." not in text and "e" not in text:
            text += ".0"
        return text + ("f" if self.f32 else "")

    def expr(self, node) -> str:
        if isinstance(node, ast.Name):
            if node.id not in self.declared:
                self.fail(node, f"the name {node.id!r}")
            return node.id
        if isinstance(node, ast.Constant):
            return self.literal(node, node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in language.BINARY_OPERATORS:
            op = language.BINARY_OPERATORS[type(node.op)]
            return f"({self.expr(node.left)} {op} {self.expr(node.right)})"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return f"(-{self.expr(node.operand)})"
            if isinstance(node.op, ast.UAdd):
                return self.expr(node.operand)
            if isinstance(node.op, ast.Not):
                return f"(!{self.truth(node.operand)})"
        if isinstance(node, ast.Compare) and len(node.ops) == 1 \
                and type(node.ops[0]) in language.COMPARISONS:
            op = language.COMPARISONS[type(node.ops[0])]
            return f"({self.expr(node.left)} {op} {self.expr(node.comparators[0])})"
        if isinstance(node, ast.IfExp):
            return (f"({self.truth(node.test)} ? {self.expr(node.body)} : "
                    f"{self.expr(node.orelse)})")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in language.FUNCTIONS:
            return f"{self.function(node.func.id)}({', '.join(self.expr(a) for a in node.args)})"
        if isinstance(node, ast.BinOp):
            self.fail(node, f"the operator {type(node.op).__name__}")
        if isinstance(node, ast.BoolOp):
            self.fail(node, "`and`/`or` used as a value")
        if isinstance(node, ast.Call):
            self.fail(node, f"the call {ast.unparse(node.func)}(...)")
        self.fail(node, f"a {type(node).__name__} expression")

    def function(self, name: str) -> str:
        spec = language.FUNCTIONS[name]
        if isinstance(spec.cuda, tuple):
            return spec.cuda[0 if self.f32 else 1]
        helper = f"_fusedopt_{name}"
        args = ", ".join(f"{self.ctype} {a}" for a in "ab"[: spec.arity])
        body = spec.cuda.replace("(T)", f"({self.ctype})")
        guard = f"FUSEDOPT_HELPER_{name.upper()}_{self.ctype.upper()}"  # one per unit
        self.helpers[name] = (f"#ifndef {guard}\n#define {guard}\n"
                              f"__device__ __forceinline__ {self.ctype} {helper}({args}) "
                              f"{{ {body} }}\n#endif\n")
        return helper

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
        for node in language.body_statements(function):
            if isinstance(node, ast.Assign):
                name = node.targets[0].id
                value = self.expr(node.value)
                if name in self.declared:
                    lines.append(f"{name} = {value};")
                else:  # not const: a later statement may assign it again
                    lines.append(f"{self.ctype} {name} = {value};")
                    self.declared.add(name)
            elif isinstance(node, ast.Return):
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                # Evaluate every output before storing any: the outputs may alias inputs.
                for k, value in enumerate(values):
                    lines.append(f"const {self.ctype} _out{k} = {self.expr(value)};")
                for k, name in enumerate(self.rule.writes):
                    lines.append(f"*_new_{name} = _out{k};")
            else:
                self.fail(node, f"a {type(node).__name__} statement")
        return lines


def function_name(rule, dtype) -> str:
    """The kernel's name, e.g. ``fusedopt_adam_float32``."""
    rule = rule_of(rule)
    return kernel_base_name(rule, signature_of(rule, dtype))


def device_function(rule, dtype) -> str:
    """The rule as a CUDA C++ ``__device__`` function (inputs by value, outputs by pointer),
    preceded by the helpers it calls."""
    rule = rule_of(rule)
    sig = signature_of(rule, dtype)
    ctype = CTYPE[sig.compute]
    translator = _Translator(rule, sig.compute)
    body = translator.body(language.function_tree(rule.element))
    params = [f"{ctype} {name}" for name in (*rule.arrays, *rule.scalars)]
    params += [f"{ctype}* __restrict__ _new_{name}" for name in rule.writes]
    return ("".join(translator.helpers.values())
            + f"// {rule.name}: translated from the element rule {rule.element.__module__}."
              f"{rule.element.__qualname__}\n"
            + f"__device__ __forceinline__ void {kernel_base_name(rule, sig)}_element(\n    "
            + ",\n    ".join(params) + ") {\n    " + "\n    ".join(body) + "\n}\n")


def rounded_arrays(rule: Rule, sig: Signature) -> list[str]:
    """The written arrays that are stored in 16 bits (each with a stochastic-rounding key)."""
    storage = dict(zip(rule.arrays, sig.storage, strict=True))
    return [w for w in rule.writes if storage[w] in LOW_PRECISION]


def _kernel_params(rule: Rule, sig: Signature) -> str:
    arrays = [f"{'' if name in rule.writes else 'const '}{CTYPE[d]}* __restrict__ {name}"
              for name, d in zip(rule.arrays, sig.storage, strict=True)]
    if sig.master:
        arrays.append("float* __restrict__ _master")
    scalars = [f"const {CTYPE[sig.compute]} {name}" for name in rule.scalars]
    rounding = (["const long long _offset", *(f"const unsigned int _key_{w}"
                                             for w in rounded_arrays(rule, sig))]
                if sig.stochastic else [])
    return ",\n    ".join([*arrays, *scalars, *rounding, "const long long _n"])


def _element_step(rule: Rule, sig: Signature, reads: list[str], writes: list[str],
                  index: str) -> str:
    """Load (converting to the compute type), call the element function, store back.

    ``reads``/``writes``: the expressions of each array's element (the master
    copy's last, when there is one); ``index``: the element's index.
    """
    ctype = CTYPE[sig.compute]
    storage = dict(zip(rule.arrays, sig.storage, strict=True))

    def load(expr: str, dtype) -> str:
        if dtype in cuda_lowp.LOAD:
            return f"{cuda_lowp.LOAD[dtype]}({expr})"
        return expr if dtype == sig.compute.name else f"({ctype}){expr}"

    def store(name: str) -> str:
        dtype = storage[name]
        if dtype in cuda_lowp.STORE:
            if sig.stochastic:
                return (f"{cuda_lowp.STORE[dtype]}_sr(_o_{name}, "
                        f"fusedopt_random16({index} + _offset, _key_{name}))")
            return f"{cuda_lowp.STORE[dtype]}(_o_{name})"
        return f"_o_{name}" if dtype == sig.compute.name else f"({CTYPE[dtype]})_o_{name}"

    outs = ", ".join(f"_o_{w}" for w in rule.writes)
    args = [load(r, storage[a])
            for r, a in zip(reads[:len(rule.arrays)], rule.arrays, strict=True)]
    if sig.master:
        args[0] = reads[-1]
    args += list(rule.scalars) + [f"&_o_{w}" for w in rule.writes]
    stores = " ".join(f"{target} = {store(w)};"
                      for target, w in zip(writes[:len(rule.writes)], rule.writes, strict=True))
    if sig.master:
        stores = f"{writes[-1]} = _o_{rule.arrays[0]}; " + stores
    return (f"{{ {ctype} {outs}; {kernel_base_name(rule, sig)}_element({', '.join(args)}); "
            f"{stores} }}")


def cuda_source(rule, dtype) -> str:
    """The complete CUDA C++ translation unit the CuPy backend compiles for ``rule`` and ``dtype``.

    ``dtype`` is one dtype for every array, a sequence of per-array dtypes, or a
    :class:`~fusedopt.kernels.dtypes.Signature`. The unit holds the translated
    device function and two ``extern "C" __global__`` kernels (see the module
    docstring). Kernel arguments: the rule's arrays (in order, each in its
    storage type; 16-bit ones as ``unsigned short`` patterns), the float32
    ``_master`` copy when the signature has one, its scalars (by value, in the
    compute type), with stochastic rounding the index ``_offset`` and one
    ``_key_<array>`` per 16-bit written array, then ``n``.
    """
    rule = rule_of(rule)
    sig = signature_of(rule, dtype)
    name = kernel_base_name(rule, sig)
    params = _kernel_params(rule, sig)
    n_lanes = lanes(sig)
    names = [*rule.arrays, *(["_master"] if sig.master else [])]
    written = [*rule.writes, *(["_master"] if sig.master else [])]
    vectors = {a: VECTOR[(d, n_lanes)] for a, d in zip(names, _storages(sig), strict=True)}
    grid_stride = ("const long long _stride = (long long)blockDim.x * gridDim.x;\n"
                   "    const long long _first = (long long)blockIdx.x * blockDim.x + "
                   "threadIdx.x;\n")
    scalar_step = _element_step(rule, sig, [f"{a}[_i]" for a in names],
                                [f"{w}[_i]" for w in written], "_i")

    def vector_load(a: str) -> str:
        if sig.master and a == rule.arrays[0]:  # written from the master copy, never read
            return f"        {vectors[a][0]} _v_{a};"
        const = "" if a in written else "const "
        return (f"        {const}{vectors[a][0]} _v_{a} = "
                f"reinterpret_cast<{const}{vectors[a][0]}*>({a})[_j];")

    loads = "\n".join(vector_load(a) for a in names)
    lane_steps = "\n".join(
        "        " + _element_step(rule, sig, [f"_v_{a}.{vectors[a][1][k]}" for a in names],
                                   [f"_v_{w}.{vectors[w][1][k]}" for w in written],
                                   f"(_j * {n_lanes} + {k})")
        for k in range(n_lanes))
    stores = "\n".join(f"        reinterpret_cast<{vectors[w][0]}*>({w})[_j] = _v_{w};"
                       for w in written)
    return (
        f"// Generated by fusedopt.backends.cuda_codegen from the rule {rule.name!r} "
        f"({sig.key}); do not edit.\n"
        + (cuda_lowp.HELPERS if sig.low_precision else "")
        + device_function(rule, sig)
        + f'\nextern "C" __global__ void {name}(\n    {params}) {{\n'
        + f"    {grid_stride}"
        + "    for (long long _i = _first; _i < _n; _i += _stride) {\n"
        + f"        {scalar_step}\n"
        + "    }\n}\n"
        + f'\nextern "C" __global__ void {name}_vec(\n    {params}) {{\n'
        + f"    // {n_lanes} elements per vector access; the arrays are aligned for it here.\n"
        + f"    {grid_stride}"
        + f"    const long long _n_vec = _n / {n_lanes};\n"
        + "    for (long long _j = _first; _j < _n_vec; _j += _stride) {\n"
        + loads + "\n" + lane_steps + "\n" + stores + "\n    }\n"
        + f"    for (long long _i = _n_vec * {n_lanes} + _first; _i < _n; _i += _stride) {{\n"
        + f"        {scalar_step}\n"
        + "    }\n}\n"
    )


def kernel_names(rule, dtype) -> tuple[str, str]:
    """(scalar kernel, vector kernel) names in :func:`cuda_source`."""
    name = function_name(rule, dtype)
    return name, name + "_vec"
