"""The package's import layers, read from the source: nothing imports upwards, nothing circles.

    core < data < models, losses < views < methods < config < train < eval, export < report < cli

``core`` holds what everything may use (errors, range checks, collectives, tensor helpers);
``config`` assembles the run's sections and is handed the method table by its callers; the
trainer measures through a monitor handed in by the CLI, so it needs no evaluation code. Every
import counts, also those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "selfsup"
LAYERS = {
    "core": 0, "data": 1, "models": 2, "losses": 2, "views": 3, "methods": 4, "config": 5,
    "train": 6, "eval": 7, "export": 7, "report": 8, "cli": 9,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """selfsup module -> the selfsup modules it imports (``from a.b import c`` counts a.b and,
    when it is a module, a.b.c)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("selfsup")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selfsup"):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _group(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "selfsup"


def test_every_module_belongs_to_a_layer():
    assert {_group(m) for m in _imports()} - {"selfsup"} <= set(LAYERS)


def test_no_module_imports_a_higher_or_sibling_layer():
    wrong = []
    for module, targets in _imports().items():
        if module == "selfsup":
            continue
        src = _group(module)
        for target in targets:
            dst = _group(target)
            if dst != src and (dst == "selfsup" or LAYERS[dst] >= LAYERS[src]):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _imports()
    cycles, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif state[nxt] == 0:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(graph):
        if state[start] == 0:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
