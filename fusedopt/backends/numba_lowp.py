"""bfloat16 and float16 loads and rounding stores for the Numba drivers, on 16-bit patterns.

The steps of :mod:`fusedopt.kernels.rounding`, written as Numba intrinsics in
LLVM IR: 32-bit integer lanes and selects, no branches, so that the drivers'
loops still vectorise 8 lanes wide (Numba would widen the same integer steps
written in Python to 64 bits, and the vectoriser would then split every lane).

=================  ==========================================================
``load_bf16(h)``   16-bit pattern -> float32 (exact)
``load_f16(h)``    16-bit pattern -> float32 (exact; Giesen's half_to_float)
``store_bf16(x)``  float32 -> nearest-even bfloat16 pattern (NaN stays quiet NaN)
``store_bf16_bf(x)`` the same for a value whose NaNs come from bfloat16 inputs (see below)
``bf16_low(w)``    the first of the two bfloat16 patterns in a little-endian 32-bit word
``bf16_high(w)``   the second
``store_bf16_pair(a, b)`` both stores of ``store_bf16_bf`` in one word (``a`` first)
``store_f16(x)``   float32 -> nearest-even float16 pattern (Giesen's fast3_rtne)
``store_*_sr``     ``(x, r)``: stochastic, with 16 random bits ``r``
``random16(i, k)`` the 16 random bits of element index ``i`` under key ``k``
=================  ==========================================================
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

I16, I32, I64, F32 = ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
ABS, SIGN, INF = 0x7FFFFFFF, 0x80000000, 0x7F800000
GOLDEN, MUL1, MUL2 = 0x9E3779B9, 0x7FEB352D, 0x846CA68B


def _c(value: int) -> ir.Constant:
    return ir.Constant(I32, value)


def _f(value: float) -> ir.Constant:
    return ir.Constant(F32, value)


def _f32(builder, value, numba_type):
    """A float argument as a float32 (a float64 from a Python literal in a rule is rounded
    once: the rules compute in float32)."""
    return builder.fptrunc(value, F32) if numba_type == types.float64 else value


def _int(builder, value, numba_type, bits: int):
    """An integer argument as an ``i<bits>`` (truncated or zero-extended)."""
    width = numba_type.bitwidth
    if width > bits:
        return builder.trunc(value, ir.IntType(bits))
    if width < bits:
        return builder.zext(value, ir.IntType(bits))
    return value


# ------------------------------------------------------------------- IR of each step
def ir_load_bf16(b, h):
    return b.bitcast(b.shl(b.zext(h, I32), _c(16)), F32)


def ir_rounded_bf16(b, x):
    """``x``'s bits plus half a bfloat16 ulp, ties to even: its upper half is the nearest
    bfloat16 (NaN aside, see :func:`ir_store_bf16`)."""
    u = b.bitcast(x, I32)
    return b.add(b.add(u, _c(0x7FFF)), b.and_(b.lshr(u, _c(16)), _c(1)))


def ir_store_bf16(b, x):
    u = b.bitcast(x, I32)
    rounded = b.lshr(ir_rounded_bf16(b, x), _c(16))
    quiet = b.or_(b.lshr(u, _c(16)), _c(0x40))
    nan = b.fcmp_unordered("uno", x, x)  # one compare (an integer test takes two)
    return b.trunc(b.select(nan, quiet, rounded), I16)


def ir_store_bf16_from_bf16(b, x):
    """:func:`ir_store_bf16` without its NaN select, for a loop whose floating inputs are all
    loaded from bfloat16 patterns, with finite scalars.

    A NaN there is a quieted input NaN or the preferred/default NaN (LLVM's NaN rules;
    x86 makes 0xFFC00000): its low 16 bits are zero. Adding 0x7FFF + lsb then cannot
    carry into bit 16, so the rounding keeps it as it is, a NaN. The select costs 3 of
    the 9 vector operations of a store: 10 to 15% of a bfloat16 Momentum step on 2 AVX2
    cores. Values with other NaN payloads (float32 or float16 inputs, scalars read
    from memory) must use :func:`ir_store_bf16`.
    """
    return b.trunc(b.lshr(ir_rounded_bf16(b, x), _c(16)), I16)


def ir_store_bf16_pair(b, first, second):
    """Two :func:`ir_store_bf16_from_bf16` into one word, the first in the low half: the
    second's rounding is masked in place, not shifted down and packed across lanes."""
    return b.or_(b.lshr(ir_rounded_bf16(b, first), _c(16)),
                 b.and_(ir_rounded_bf16(b, second), _c(0xFFFF0000)))


def ir_store_bf16_sr(b, x, r):
    u = b.bitcast(x, I32)
    t = b.lshr(b.add(u, r), _c(16))
    nan = b.fcmp_unordered("uno", x, x)
    all_ones = b.icmp_unsigned("==", b.and_(t, _c(0x7F80)), _c(0x7F80))  # inf or overflow
    return b.select(b.or_(nan, all_ones), ir_store_bf16(b, x), b.trunc(t, I16))


def ir_load_f16(b, h):
    hz = b.zext(h, I32)
    o = b.shl(b.and_(hz, _c(0x7FFF)), _c(13))
    exponent = b.and_(o, _c(0x0F800000))
    o = b.add(o, _c(0x38000000))  # rebias 15 -> 127
    special = b.add(o, _c(0x38000000))  # inf/NaN: all exponent bits
    renormalised = b.bitcast(b.fsub(b.bitcast(b.add(o, _c(0x00800000)), F32),
                                    b.bitcast(_c(0x38800000), F32)), I32)  # exact
    o = b.select(b.icmp_unsigned("==", exponent, _c(0x0F800000)), special,
                 b.select(b.icmp_unsigned("==", exponent, _c(0)), renormalised, o))
    return b.bitcast(b.or_(o, b.shl(b.and_(hz, _c(0x8000)), _c(16))), F32)


def ir_store_f16(b, x):
    u = b.bitcast(x, I32)
    sign = b.and_(u, _c(SIGN))
    a = b.xor(u, sign)
    big = b.select(b.icmp_signed(">", a, _c(INF)), _c(0x7E00), _c(0x7C00))
    # below float16's normal range one float addition of 0.5 aligns the 10 bits, rounding
    # to nearest even; the integer subtraction removes the 0.5 again
    tiny = b.sub(b.bitcast(b.fadd(b.bitcast(a, F32), _f(0.5)), I32), _c(0x3F000000))
    odd = b.and_(b.lshr(a, _c(13)), _c(1))
    normal = b.lshr(b.add(b.add(a, _c(0xC8000FFF)), odd), _c(13))  # rebias, round half even
    o = b.select(b.icmp_signed(">=", a, _c(0x47800000)), big,
                 b.select(b.icmp_signed("<", a, _c(0x38800000)), tiny, normal))
    return b.trunc(b.or_(o, b.lshr(sign, _c(16))), I16)


def ir_store_f16_sr(b, x, r):
    floor = b.module.declare_intrinsic("llvm.floor", [F32])
    u = b.bitcast(x, I32)
    a = b.and_(u, _c(ABS))
    exponent = b.lshr(a, _c(23))
    ulp_exponent = b.sub(b.select(b.icmp_signed(">", exponent, _c(113)), exponent, _c(113)),
                         _c(10))  # float16's ulp: 2**(e - 10), at least 2**-24
    ulp = b.bitcast(b.shl(ulp_exponent, _c(23)), F32)
    inverse = b.bitcast(b.shl(b.sub(_c(254), ulp_exponent), _c(23)), F32)
    scaled = b.fmul(b.bitcast(a, F32), inverse)  # exact: a power of two
    low = b.call(floor, [scaled])
    fraction = b.fmul(b.fsub(scaled, low), _f(65536.0))
    up = b.fcmp_ordered("<", b.uitofp(r, F32), fraction)
    rounded = b.fmul(b.fadd(low, b.select(up, _f(1.0), _f(0.0))), ulp)
    signed = b.bitcast(b.or_(b.bitcast(rounded, I32), b.and_(u, _c(SIGN))), F32)
    keep = b.fcmp_ordered("<=", rounded, _f(65504.0))  # NaN, inf and overflow: nearest
    return b.select(keep, ir_store_f16(b, signed), ir_store_f16(b, x))


def ir_mix32(b, x):
    x = b.xor(x, b.lshr(x, _c(16)))
    x = b.mul(x, _c(MUL1))
    x = b.xor(x, b.lshr(x, _c(15)))
    x = b.mul(x, _c(MUL2))
    return b.xor(x, b.lshr(x, _c(16)))


def ir_random16(b, index, key):
    lo = b.trunc(index, I32)
    hi = b.trunc(b.lshr(index, ir.Constant(I64, 32)), I32)
    return b.lshr(ir_mix32(b, b.xor(lo, b.add(key, b.mul(hi, _c(GOLDEN))))), _c(16))


# ------------------------------------------------------------------------ intrinsics
@intrinsic
def load_bf16(typingctx, bits):
    if not isinstance(bits, types.Integer):
        return None
    return types.float32(bits), lambda ctx, b, sig, args: ir_load_bf16(
        b, _int(b, args[0], bits, 16))


@intrinsic
def load_f16(typingctx, bits):
    if not isinstance(bits, types.Integer):
        return None
    return types.float32(bits), lambda ctx, b, sig, args: ir_load_f16(
        b, _int(b, args[0], bits, 16))


@intrinsic
def store_bf16(typingctx, value):
    if not isinstance(value, types.Float):
        return None
    return types.uint16(value), lambda ctx, b, sig, args: ir_store_bf16(b, _f32(b, args[0], value))


@intrinsic
def store_bf16_bf(typingctx, value):
    if not isinstance(value, types.Float):
        return None
    return types.uint16(value), lambda ctx, b, sig, args: ir_store_bf16_from_bf16(
        b, _f32(b, args[0], value))


def _half_of_word(widen):
    """An intrinsic taking one bfloat16 pattern of a 32-bit word to float32 with ``widen``
    (a shift for the low half, a mask for the high one)."""
    def half(typingctx, word):
        if word != types.uint32:
            return None
        return types.float32(word), lambda ctx, b, sig, args: b.bitcast(widen(b, args[0]), F32)
    return intrinsic(half)


bf16_low = _half_of_word(lambda b, w: b.shl(w, _c(16)))
bf16_high = _half_of_word(lambda b, w: b.and_(w, _c(0xFFFF0000)))


@intrinsic
def store_bf16_pair(typingctx, first, second):
    if not isinstance(first, types.Float) or not isinstance(second, types.Float):
        return None
    return types.uint32(first, second), lambda ctx, b, sig, args: ir_store_bf16_pair(
        b, _f32(b, args[0], first), _f32(b, args[1], second))


@intrinsic
def store_f16(typingctx, value):
    if not isinstance(value, types.Float):
        return None
    return types.uint16(value), lambda ctx, b, sig, args: ir_store_f16(b, _f32(b, args[0], value))


@intrinsic
def store_bf16_sr(typingctx, value, random):
    if not isinstance(value, types.Float) or not isinstance(random, types.Integer):
        return None
    return types.uint16(value, random), lambda ctx, b, sig, args: ir_store_bf16_sr(
        b, _f32(b, args[0], value), _int(b, args[1], random, 32))


@intrinsic
def store_f16_sr(typingctx, value, random):
    if not isinstance(value, types.Float) or not isinstance(random, types.Integer):
        return None
    return types.uint16(value, random), lambda ctx, b, sig, args: ir_store_f16_sr(
        b, _f32(b, args[0], value), _int(b, args[1], random, 32))


@intrinsic
def random16(typingctx, index, key):
    if not isinstance(index, types.Integer) or not isinstance(key, types.Integer):
        return None
    return types.uint32(index, key), lambda ctx, b, sig, args: ir_random16(
        b, _int(b, args[0], index, 64), _int(b, args[1], key, 32))
