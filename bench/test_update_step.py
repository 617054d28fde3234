"""Single-tensor update steps: fusedopt vs the floor, the NumPy reference and torch.optim.

    pytest bench/ --benchmark-only                 # 4096, 1M and 16M fp32 elements
    FUSEDOPT_BENCH_SIZES=4096,65536 pytest bench/  # quicker

The ratio table printed at the end is the one the targets are stated in.
"""

from __future__ import annotations

import os

import pytest

from fusedopt import bench, config

SIZES = ([int(x) for x in os.environ["FUSEDOPT_BENCH_SIZES"].split(",")]
         if os.environ.get("FUSEDOPT_BENCH_SIZES") else list(config.BENCH_SIZES))


@pytest.mark.parametrize("impl", bench.IMPLS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("rule", bench.bench_rules())  # every optimizer rule of the registry
def test_update_step(benchmark, rule, n, impl):
    step = bench.make_step(rule, impl, n)
    if step is None:
        pytest.skip(f"{impl} is not available for {rule} here (torch missing, or no such "
                    "variant in torch)")
    step()  # compile / warm up outside the timing
    benchmark.group = f"{rule} n={n}"
    benchmark.extra_info.update(rule=rule, impl=impl, n=n, bytes=bench.bytes_moved(rule, n))
    benchmark(step)
