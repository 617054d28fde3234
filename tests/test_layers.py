"""The package's shape: arrows point down, no import cycles, no file over 400 lines.

The imports are read from the source (every ``import`` statement, at module level
or inside functions), not from what happens to be loaded, so a lazy import that
runs the wrong way fails here too.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fusedopt"

#: Layers, lowest first. A module may import from its own layer and the layers below.
LAYERS = [
    ("base", ["fusedopt.config", "fusedopt._version"]),
    ("kernels", ["fusedopt.kernels"]),
    ("backends", ["fusedopt.backends"]),
    ("core", ["fusedopt._checks", "fusedopt.functional", "fusedopt.arena",
              "fusedopt.schedules", "fusedopt.optim", "fusedopt.devices"]),
    ("adapters", ["fusedopt.torch", "fusedopt.distributed"]),
    ("application", ["fusedopt.train"]),
    ("tools", ["fusedopt.bench", "fusedopt.cli", "fusedopt.__main__", "fusedopt"]),
]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{name} is in no layer; add it to LAYERS"
    return best[0]


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The fusedopt modules ``name`` imports (``from fusedopt import x`` is module ``x``
    when there is one)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "fusedopt")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
            if base.split(".")[0] != "fusedopt":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.add(candidate if candidate in known else base)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: {i for i in imports(name, path, known) if i in known}
            for name, path in found.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_import_runs_up_a_layer():
    wrong = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
             for a, targets in graph().items() for b in targets if layer_of(b) > layer_of(a)]
    assert not wrong, "\n".join(wrong)


def test_kernels_import_nothing_from_fusedopt_but_themselves():
    for a, targets in graph().items():
        if a.startswith("fusedopt.kernels"):
            assert all(t.startswith("fusedopt.kernels") for t in targets), (a, targets)
        if a.startswith("fusedopt.backends"):
            assert all(t.startswith(("fusedopt.kernels", "fusedopt.backends", "fusedopt.config"))
                       for t in targets), (a, targets)


def test_the_import_graph_has_no_cycles():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("folder", ["fusedopt", "tests", "bench", "examples"])
def test_no_source_file_over_400_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these (a file holds one idea): {long}"


def test_the_checker_sees_a_wrong_way_import(tmp_path):
    """The graph reader is not vacuous: a kernels module importing the optimizers is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from fusedopt.optim import Adam\n    from . import registry\n")
    known = set(modules())
    found = imports("fusedopt.kernels.bad", bad, known)
    assert "fusedopt.optim" in found and "fusedopt.kernels.registry" in found
    assert layer_of("fusedopt.optim") > layer_of("fusedopt.kernels.bad")
