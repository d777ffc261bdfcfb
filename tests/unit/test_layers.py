"""Layers that depend one way: no import cycle inside the package, and no layer importing one above it.

Imports inside functions count: a lazy import still ties the two modules together.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "moe_experts"

# Bottom to top. A module may import only from its own layer or the ones before it.
LAYERS = [
    ["errors", "machine", "progress", "sources"],
    ["config", "workspace", "recipes"],
    ["data"],
    ["modeling"],
    ["routing"],
    ["inference"],
    ["evaluation"],
    ["pipeline", "lifecycle", "api"],
    ["cli", "serve", "__main__"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports, anywhere in its file (the package root itself excluded)."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != "moe_experts":
                found.add(target)
    return found


def _layer(module: str) -> str:
    return module.split(".")[1]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == "moe_experts":
            continue  # the package root may be a lazy facade over everything
        graph.setdefault(_layer(name), set()).update(
            _layer(t) for t in _imports(name, path, modules) if _layer(t) != _layer(name))
    return graph


def test_every_top_level_module_has_a_layer():
    assert set(_graph()) <= set(RANK), f"add to LAYERS: {sorted(set(_graph()) - set(RANK))}"


def test_no_layer_imports_one_above_it():
    upward = sorted(f"{a} -> {b}" for a, targets in _graph().items() for b in targets if RANK[b] > RANK[a])
    assert not upward, "imports against the layer order:\n  " + "\n  ".join(upward)


def _module_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items() if name != "moe_experts"}


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    cycles: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycle_between_layers():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles between layers:\n  " + "\n  ".join(cycles)


def test_no_import_cycle_between_modules():
    """Inside a layer too: two modules that import each other are one module in two files."""
    cycles = _cycles(_module_graph())
    assert not cycles, "import cycles between modules:\n  " + "\n  ".join(cycles)


def test_the_checker_sees_a_lazy_upward_import(tmp_path, monkeypatch):
    """The test can fail: an import inside a function, from a lower layer to a higher one, is found."""
    fake = tmp_path / "moe_experts"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("def f():\n    from moe_experts.evaluation import report\n")
    (fake / "evaluation").mkdir()
    (fake / "evaluation" / "__init__.py").write_text("from moe_experts import data\n")
    (fake / "evaluation" / "report.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    graph = _graph()
    assert graph["data"] == {"evaluation"} and graph["evaluation"] == {"data"}
    assert _cycles(graph) == ["data -> evaluation -> data"]
    assert _cycles(_module_graph()) == ["moe_experts.data -> moe_experts.evaluation -> moe_experts.data"]
