"""Rounding into 16 bits: the conversions against ml_dtypes and NumPy, stochastic rounding as
a distribution (unbiased, deterministic, progress where nearest rounding stalls), and parity
with torch's fused Adam on bfloat16 and float16 tensors."""

from __future__ import annotations

import numpy as np
import pytest
from lowp_oracle import ml_dtypes

import fusedopt as fo
from fusedopt.kernels import rounding

BF16 = np.dtype(ml_dtypes.bfloat16)


def every_float32_kind(n: int = 400_000, seed: int = 0) -> np.ndarray:
    """Random bit patterns (every exponent, NaNs, subnormals), typical values, and the edges."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    typical = (rng.standard_normal(n) * 10.0 ** rng.integers(-9, 6, n)).astype(np.float32)
    edges = np.array([65504, 65519.99, 65520, 65536, -65520, 6e-8, 2**-25, 1.5 * 2**-24, 0.0,
                      -0.0, np.inf, -np.inf, np.nan, 3.3895314e38, 3.4e38, -3.4e38, 1e-40],
                     np.float32)
    return np.concatenate([patterns, typical, edges])


def numba_convert(x: np.ndarray, storage: str, seed: int | None) -> np.ndarray:
    """Store ``x`` with the Numba drivers' own conversions: ``lion_`` with lr 0 writes its
    master copy's value, ``x * 1 - 0 * sign(0)`` (exact for -0, inf and NaN too), into the
    16-bit parameter."""
    out = np.zeros(x.size, BF16 if storage == "bfloat16" else np.float16)
    kwargs = {"stochastic_rounding": True, "seed": seed, "step": 1} if seed is not None else {}
    zeros = np.zeros(x.size, np.float32)
    fo.lion_(out, zeros, zeros.copy(), lr=0.0, master=x.copy(), **kwargs)
    return out.view(np.uint16)


@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_nearest_rounding_is_ieee_round_to_nearest_even(storage):
    x = every_float32_kind()
    with np.errstate(all="ignore"):
        expected = x.astype(BF16 if storage == "bfloat16" else np.float16).view(np.uint16)
    nan = np.isnan(x)
    got = numba_convert(x, storage, None)
    np.testing.assert_array_equal(got[~nan], expected[~nan])
    np.testing.assert_array_equal(rounding.nearest(x, storage)[~nan], expected[~nan])
    assert np.isnan(rounding.decode(got[nan], storage)).all()  # NaN stays NaN


@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_every_16_bit_pattern_decodes_exactly(storage):
    patterns = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    expected = patterns.view(BF16 if storage == "bfloat16" else np.float16).astype(np.float32)
    dtype = BF16 if storage == "bfloat16" else np.float16
    # adam_ with beta1 = 0 stores each decoded gradient in the float32 exp_avg, exactly
    param, grad = np.zeros(2**16, dtype), patterns.copy().view(dtype)
    exp_avg, exp_avg_sq = np.zeros(2**16, np.float32), np.zeros(2**16, np.float32)
    fo.adam_(param, grad, exp_avg, exp_avg_sq, step=1, beta1=0.0, lr=0.0)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(exp_avg[finite], expected[finite])
    np.testing.assert_array_equal(exp_avg[~finite & ~np.isnan(expected)],
                                  expected[~finite & ~np.isnan(expected)])
    assert np.isnan(exp_avg[np.isnan(expected)]).all()
    np.testing.assert_array_equal(rounding.decode(patterns, storage)[finite], expected[finite])


@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_stochastic_rounding_is_one_definition_everywhere(storage):
    x = every_float32_kind(100_000)
    got = numba_convert(x, storage, 77)
    # the parameter is array 0 of the rule: the reference rounds it with the same hash
    want = rounding.round_to(x, storage, key=rounding.slot_key(77, 1, 0))
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert rounding.slot_key(77, 1, 1) != rounding.slot_key(77, 1, 0)  # the slot is in the key


@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_stochastic_rounding_never_overflows_where_nearest_does_not(storage):
    top = 3.3895314e38 if storage == "bfloat16" else 65504.0
    x = np.linspace(top, top * (1 + 2**-9), 10_000).astype(np.float32)
    x = np.concatenate([x, -x])
    nearest = rounding.decode(rounding.nearest(x, storage), storage)
    for seed in range(20):
        got = rounding.decode(numba_convert(x, storage, seed), storage)
        assert np.all(np.isfinite(got) | ~np.isfinite(nearest))


@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_stochastic_rounding_is_unbiased(storage):
    """Averaged over seeds, E[round(x)] = x: within 5 standard deviations of the exact mean
    of the two neighbours weighted by the distance (a binomial bound)."""
    rng = np.random.default_rng(1)
    x = (rng.uniform(0.5, 1, 64) * 2.0 ** rng.integers(-10, 10, 64)).astype(np.float32)
    dtype = BF16 if storage == "bfloat16" else np.dtype(np.float16)
    q = x.astype(dtype)
    below = np.where(q.astype(np.float32) > x, np.nextafter(q, dtype.type(-np.inf)), q)
    down = below.astype(np.float64)
    up = np.nextafter(below, dtype.type(np.inf)).astype(np.float64)
    p = (x.astype(np.float64) - down) / (up - down)  # the chance of rounding up
    seeds = 4000
    total = np.zeros(x.size)
    for seed in range(seeds):
        total += rounding.decode(numba_convert(x, storage, seed), storage)
    mean = total / seeds
    sigma = (up - down) * np.sqrt(p * (1 - p) / seeds)
    assert np.all(np.abs(mean - x) <= 5 * sigma + 1e-12 * np.abs(x))


def test_stochastic_rounding_is_deterministic():
    x = np.random.default_rng(2).standard_normal(10_000).astype(np.float32)
    first, again = numba_convert(x, "bfloat16", 5), numba_convert(x, "bfloat16", 5)
    other = numba_convert(x, "bfloat16", 6)
    np.testing.assert_array_equal(first, again)
    assert np.mean(first != other) > 0.2  # another seed draws other bits


def test_sgd_on_bf16_moves_where_nearest_rounding_stalls():
    """bf16 parameters at 1.0 with updates below half an ulp (2**-9 here): nearest rounding
    never moves them; stochastic rounding follows the float32 trajectory in expectation."""
    n, steps, update = 4096, 1000, 1e-4
    grad = np.full(n, update, BF16)  # lr 1: the update is the gradient (bf16-rounded)
    exact = 1.0 - steps * float(grad[0])
    nearest = np.ones(n, BF16)
    stochastic = np.ones(n, BF16)
    for t in range(1, steps + 1):
        fo.sgd_(nearest, grad, lr=1.0)
        fo.sgd_(stochastic, grad, lr=1.0, stochastic_rounding=True, seed=3, step=t)
    assert (nearest == 1.0).all()
    mean = stochastic.astype(np.float64).mean()
    ulp = 2.0**-8  # in [0.5, 1)
    # each step adds at most ulp^2/4 of variance per element, independently
    bound = 5 * np.sqrt(steps * ulp**2 / 4 / n)
    assert abs(mean - exact) <= bound, (mean, exact, bound)


def _ulp(values: np.ndarray, mantissa: int) -> np.ndarray:
    _, exponent = np.frexp(np.abs(values))  # |v| = m 2**e, m in [0.5, 1)
    return np.maximum(2.0 ** (exponent - 1 - mantissa), 2.0**-24)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_adam_matches_torch_fused_on_16_bit_tensors(dtype):
    """Each of 20 steps, from torch's own state, stores parameters and moments within one
    unit in the last place of torch's fused Adam (state in the parameters' dtype, as torch
    keeps it). The two order their float32 arithmetic differently, so over many steps the
    16-bit trajectories can drift apart by more than an ulp: each step is compared."""
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    theirs = torch.randn(10_000, generator=gen).to(torch_dtype).requires_grad_(True)
    opt = torch.optim.Adam([theirs], lr=1e-2, fused=True)
    mantissa = 7 if dtype == "bfloat16" else 10
    for step in range(1, 21):
        grad = torch.randn(10_000, generator=gen).to(torch_dtype)
        ours = theirs.detach().clone()
        state = opt.state.get(theirs, {})
        exp_avg = state["exp_avg"].clone() if state else torch.zeros_like(ours)
        exp_avg_sq = state["exp_avg_sq"].clone() if state else torch.zeros_like(ours)
        theirs.grad = grad.clone()
        try:
            opt.step()
        except RuntimeError as exc:  # an older torch without CPU fused kernels for 16 bits
            pytest.skip(f"torch fused Adam does not run {dtype} on the CPU here ({exc})")
        fo.adam_(ours, grad, exp_avg, exp_avg_sq, step=step, lr=1e-2)
        state = opt.state[theirs]
        for name, a, b in (("param", ours, theirs.detach()), ("exp_avg", exp_avg,
                           state["exp_avg"]), ("exp_avg_sq", exp_avg_sq, state["exp_avg_sq"])):
            a, b = a.double().numpy(), b.double().numpy()
            worst = np.max(np.abs(a - b) / _ulp(b, mantissa))
            assert worst <= 1, f"step {step}: {name} {worst:.1f} ulp from torch"
