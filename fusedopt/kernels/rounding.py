"""Low-precision storage: bfloat16 and float16 as 16-bit patterns, and how float32 is rounded
into them.

Neither NumPy nor CuPy nor Numba has a bfloat16 type, so every 16-bit array
is handled as its bit patterns (``uint16``), with exact conversions written in
integer arithmetic. The same steps are written three times, and tested to give
the same bits: here in NumPy (the reference, the checkpoints and the arenas'
conversions), in the Numba drivers (:mod:`fusedopt.backends.numba_lowp`) and in
the generated CUDA (:mod:`fusedopt.backends.cuda_lowp`).

Rounding (float32 ``x`` to a 16-bit format):

* **nearest** (the default): IEEE round-to-nearest-even. NaN stays NaN (quiet),
  infinities stay infinite, and a finite value becomes infinite only where IEEE
  says so (at or beyond the largest finite value plus half an ulp).
* **stochastic**: up to the next representable value with probability equal to
  the distance from the one below, in units of the ulp, so ``E[round(x)] = x``.
  The 16 random bits come from a counter-based hash (no RNG state)::

      key  = slot_key(seed, step, slot)        # on the host, once per array and step
      r    = mix32(lo32(i + offset) ^ (key + hi32(i + offset) * 0x9E3779B9)) >> 16

  where ``i`` is the element's index in its tensor (or arena buffer), ``slot``
  the array's position in the rule's arrays, and ``mix32`` Wellons' lowbias32.
  bfloat16: ``(bits(x) + r) >> 16`` (torchao's method); float16: the value is
  scaled by its float16 ulp, and rounds up when ``r < 2**16 * frac``. Where
  that would give infinity from a finite ``x`` that nearest rounding keeps
  finite, the nearest result is used: stochastic rounding never overflows.
"""

from __future__ import annotations

import numpy as np

from fusedopt.kernels.dtypes import BFLOAT16, FLOAT16, LOW_PRECISION  # noqa: F401 (re-exported)

GOLDEN = 0x9E3779B9
_M32 = 0xFFFFFFFF
F16_MAX = 65504.0


# ----------------------------------------------------------------------------- hashing
def mix32(x):
    """Wellons' lowbias32: a 32-bit integer hash (Python int or uint32 array)."""
    if isinstance(x, int):
        x &= _M32
        x ^= x >> 16
        x = (x * 0x7FEB352D) & _M32
        x ^= x >> 15
        x = (x * 0x846CA68B) & _M32
        return x ^ (x >> 16)
    x = np.asarray(x, np.uint32)
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def slot_key(seed: int, step: int, slot: int) -> int:
    """The 32-bit key of one array's stochastic rounding at one step (``seed``, ``step`` in
    ``[0, 2**64)``)."""
    k = mix32((slot + GOLDEN) & _M32)
    for word in (step & _M32, step >> 32, seed & _M32, seed >> 32):
        k = mix32(k ^ word)
    return k


def random16(n: int, key: int, offset: int = 0) -> np.ndarray:
    """The 16 random bits (as uint32 values below 2**16) of elements ``offset .. offset+n-1``."""
    index = np.arange(offset, offset + n, dtype=np.uint64)
    lo = (index & np.uint64(_M32)).astype(np.uint32)
    hi = (index >> np.uint64(32)).astype(np.uint32)
    mixed = mix32(lo ^ (np.uint32(key) + hi * np.uint32(GOLDEN)))
    return mixed >> np.uint32(16)


# ------------------------------------------------------------------------- conversions
def _bits(x) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def decode(bits, storage: str) -> np.ndarray:
    """16-bit patterns as float32 values (exact)."""
    bits = np.asarray(bits, np.uint16)
    if storage == BFLOAT16:
        return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return bits.view(np.float16).astype(np.float32)


def nearest(x, storage: str) -> np.ndarray:
    """float32 values rounded to nearest-even, as 16-bit patterns."""
    u = _bits(x)
    if storage == BFLOAT16:
        rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        quiet = (u >> np.uint32(16)) | np.uint32(0x40)
        return np.where(nan, quiet, rounded).astype(np.uint16)
    with np.errstate(over="ignore"):  # IEEE: beyond max + ulp/2 is inf, as nearest says
        return np.asarray(x, np.float32).astype(np.float16).view(np.uint16)


def stochastic(x, storage: str, r) -> np.ndarray:
    """float32 values rounded stochastically with the 16 random bits ``r``, as patterns."""
    x = np.asarray(x, np.float32)
    r = np.asarray(r, np.uint32)
    if storage == BFLOAT16:
        u = _bits(x).astype(np.uint64)  # no wrap for negative NaNs
        t = ((u + r) >> np.uint64(16)).astype(np.uint32)
        special = (t & np.uint32(0x7F80)) == np.uint32(0x7F80)  # NaN, inf or an overflow
        return np.where(special, nearest(x, storage), t).astype(np.uint16)
    magnitude = np.abs(x)
    exponent = (_bits(magnitude) >> np.uint32(23)).astype(np.int64)
    ulp_exponent = np.maximum(exponent, 113) - 10  # 2**-24 below float16's normal range
    with np.errstate(invalid="ignore", over="ignore"):
        ulp = np.ldexp(np.float32(1), (ulp_exponent - 127).astype(np.int32)).astype(np.float32)
        scaled = magnitude * np.ldexp(np.float32(1), (127 - ulp_exponent).astype(np.int32)
                                      ).astype(np.float32)
        low = np.floor(scaled)
        up = r.astype(np.float32) < (scaled - low) * np.float32(65536)
        rounded = ((low + up.astype(np.float32)) * ulp).astype(np.float32)
    rounded = np.copysign(rounded, x).astype(np.float32)
    keep = np.abs(rounded) <= np.float32(F16_MAX)  # NaN, inf, overflow: nearest
    return np.where(keep, nearest(rounded, FLOAT16), nearest(x, FLOAT16)).astype(np.uint16)


def round_to(x, storage: str, *, key: int | None = None, offset: int = 0) -> np.ndarray:
    """``x`` (float32) stored in ``storage``: nearest, or stochastic with ``key``."""
    x = np.asarray(x, np.float32)
    if key is None:
        return nearest(x, storage)
    r = random16(x.size, key, offset).reshape(x.shape)
    return stochastic(x, storage, r)
