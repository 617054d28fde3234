"""After a benchmark run, print each group's ratios (x floor, x faster than ref, x torch fused).

pytest-benchmark prints absolute times; the targets are ratios taken in one run,
so they are computed here from the same run's medians.
"""

from __future__ import annotations

from fusedopt import bench


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    results = []
    for b in session.benchmarks:
        if b.has_error or not b.stats or "rule" not in b.extra_info:
            continue
        info = b.extra_info
        results.append(bench.Result(info["rule"], info["impl"], info["n"], b.stats.median,
                                    info["bytes"], b.stats.rounds))
    if results:
        terminalreporter.section("fusedopt ratios (medians of this run)")
        terminalreporter.write_line(bench.format_table(bench.ratios(results)))
