"""A whole model's Adam step: 157 tensors (ANCHORS.md's transformer-like set), 10.8M fp32.

    pytest bench/test_model_step.py --benchmark-only

arena (one launch), list (one launch per tensor), arena with clipping and the
non-finite check, the floor, and torch.optim.Adam fused/foreach when torch is installed.
"""

from __future__ import annotations

import pytest

from fusedopt import bench

SHAPES = bench.transformer_like_shapes()


@pytest.mark.parametrize("impl", bench.MODEL_IMPLS)
def test_model_step(benchmark, impl):
    step = bench.make_model_step(impl, SHAPES)
    if step is None:
        pytest.skip(f"{impl} needs torch (pip install 'fusedopt[compare]')")
    step()
    benchmark.group = "adam, 157 tensors"
    benchmark(step)
