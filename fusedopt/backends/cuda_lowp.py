"""bfloat16 and float16 loads and rounding stores in CUDA C++, on 16-bit patterns.

The steps of :mod:`fusedopt.kernels.rounding` once more, in C: integer bit
manipulation and exact float operations only, so the generated kernels give the
same bits as the Numba drivers (and as the NumPy reference) for the same call,
whatever the launch shape. The kernels are compiled with ``--fmad=false`` for
the same reason: a fused multiply-add rounds once where the CPU rounds twice.
"""

from __future__ import annotations

HELPERS = r"""
// 16-bit storage (fusedopt.kernels.rounding): exact loads, nearest-even and stochastic stores.
#ifndef FUSEDOPT_LOWP_HELPERS
#define FUSEDOPT_LOWP_HELPERS
__device__ __forceinline__ unsigned int fusedopt_f2u(float x) { return __float_as_uint(x); }
__device__ __forceinline__ float fusedopt_u2f(unsigned int u) { return __uint_as_float(u); }

__device__ __forceinline__ unsigned int fusedopt_mix32(unsigned int x) {
    x ^= x >> 16; x *= 0x7FEB352Du; x ^= x >> 15; x *= 0x846CA68Bu; x ^= x >> 16;
    return x;
}
__device__ __forceinline__ unsigned int fusedopt_random16(long long index, unsigned int key) {
    const unsigned long long i = (unsigned long long)index;
    const unsigned int lo = (unsigned int)i, hi = (unsigned int)(i >> 32);
    return fusedopt_mix32(lo ^ (key + hi * 0x9E3779B9u)) >> 16;
}

__device__ __forceinline__ float fusedopt_load_bf16(unsigned short h) {
    return fusedopt_u2f(((unsigned int)h) << 16);
}
__device__ __forceinline__ unsigned short fusedopt_store_bf16(float x) {
    const unsigned int u = fusedopt_f2u(x);
    const unsigned int rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const unsigned int quiet = (u >> 16) | 0x40u;
    return (unsigned short)(((u & 0x7FFFFFFFu) > 0x7F800000u) ? quiet : rounded);
}
__device__ __forceinline__ unsigned short fusedopt_store_bf16_sr(float x, unsigned int r) {
    const unsigned int u = fusedopt_f2u(x);
    const unsigned int t = (u + r) >> 16;
    const bool special = ((u & 0x7FFFFFFFu) > 0x7F800000u) || ((t & 0x7F80u) == 0x7F80u);
    return special ? fusedopt_store_bf16(x) : (unsigned short)t;
}

__device__ __forceinline__ float fusedopt_load_f16(unsigned short h) {
    const unsigned int hz = h;
    unsigned int o = (hz & 0x7FFFu) << 13;
    const unsigned int exponent = o & 0x0F800000u;
    o += 0x38000000u;
    if (exponent == 0x0F800000u) o += 0x38000000u;
    else if (exponent == 0u) o = fusedopt_f2u(fusedopt_u2f(o + 0x00800000u)
                                              - fusedopt_u2f(0x38800000u));
    return fusedopt_u2f(o | ((hz & 0x8000u) << 16));
}
__device__ __forceinline__ unsigned short fusedopt_store_f16(float x) {
    const unsigned int u = fusedopt_f2u(x);
    const unsigned int sign = u & 0x80000000u;
    const unsigned int a = u ^ sign;
    unsigned int o;
    if (a >= 0x47800000u) o = (a > 0x7F800000u) ? 0x7E00u : 0x7C00u;
    else if (a < 0x38800000u) o = fusedopt_f2u(fusedopt_u2f(a) + 0.5f) - 0x3F000000u;
    else o = (a + 0xC8000FFFu + ((a >> 13) & 1u)) >> 13;
    return (unsigned short)(o | (sign >> 16));
}
__device__ __forceinline__ unsigned short fusedopt_store_f16_sr(float x, unsigned int r) {
    const unsigned int u = fusedopt_f2u(x);
    const unsigned int a = u & 0x7FFFFFFFu;
    const unsigned int exponent = a >> 23;
    const unsigned int ulp_exponent = (exponent > 113u ? exponent : 113u) - 10u;
    const float ulp = fusedopt_u2f(ulp_exponent << 23);
    const float inverse = fusedopt_u2f((254u - ulp_exponent) << 23);
    const float scaled = fusedopt_u2f(a) * inverse;
    const float low = floorf(scaled);
    const float fraction = (scaled - low) * 65536.0f;
    const float up = ((float)r < fraction) ? 1.0f : 0.0f;
    const float rounded = (low + up) * ulp;
    const float with_sign = fusedopt_u2f(fusedopt_f2u(rounded) | (u & 0x80000000u));
    return rounded <= 65504.0f ? fusedopt_store_f16(with_sign) : fusedopt_store_f16(x);
}
#endif
"""

LOAD = {"bfloat16": "fusedopt_load_bf16", "float16": "fusedopt_load_f16"}
STORE = {"bfloat16": "fusedopt_store_bf16", "float16": "fusedopt_store_f16"}
