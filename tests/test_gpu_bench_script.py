"""bench/gpu_bench.py runs end to end on the host-emulated CuPy (so a GPU session finds
no Python error in it); the figures it prints here mean nothing."""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_bench_runs_on_the_host_emulation(host_cupy, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setitem(sys.modules, "torch", None)  # the GPU image's torch is not needed here
    import gpu_bench

    assert gpu_bench.main(["--out", str(tmp_path), "--sizes", "8,10", "--repeats", "2",
                           "--rules", "adam,sgd"]) == 0
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    impls = {(r["rule"], r["n"], r["impl"]) for r in result["results"]}
    for rule in ("adam", "sgd"):
        for n in (256, 1024):
            for impl in ("fusedopt", "fusedopt_scalar", "cupy_unfused", "copy"):
                assert (rule, n, impl) in impls
    assert {r["impl"] for r in result["model"]} == {"arena", "arena_clip_nonfinite"}
    assert result["model"][0]["tensors"] == 157
    assert "Adam over 157 tensors" in capsys.readouterr().out
