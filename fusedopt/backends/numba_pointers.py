"""Typed pointers from integer addresses, for the multi-tensor Numba drivers.

A list of tensors reaches a compiled loop as a table of addresses (``int64``);
``pointer_f32(address)`` and its kin turn one into a ``float32*`` (``float64*``,
``uint16*`` for 16-bit patterns) that ``numba.carray`` views as an array. The
addresses come from arrays the caller keeps alive for the call.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic


def _pointer_intrinsic(element):
    def pointer(typingctx, address):
        if not isinstance(address, types.Integer):
            return None
        target = types.CPointer(element)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(target))

        return target(address), codegen

    pointer.__name__ = f"pointer_{element}"
    return intrinsic(pointer)


pointer_f32 = _pointer_intrinsic(types.float32)
pointer_f64 = _pointer_intrinsic(types.float64)
pointer_u16 = _pointer_intrinsic(types.uint16)
pointer_u32 = _pointer_intrinsic(types.uint32)  # two bfloat16 patterns a word

#: the pointer intrinsic of each storage dtype as the drivers see it, and its item size
POINTERS = {"float32": ("_pointer_f32", 4), "float64": ("_pointer_f64", 8),
            "bfloat16": ("_pointer_u16", 2), "float16": ("_pointer_u16", 2)}
