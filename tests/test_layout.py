"""The layout rules of the codebase, checked: a wing (gslb, edge, control) imports only
itself and cdnkit; cdnkit imports no wing; no import cycles between modules (lazy
imports inside functions count); no module over 600 lines; a family of modules lives in its
own package (no `dnssec_keys.py` beside `dnssec.py`), and no folder holds more than 32."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("cdnkit", "gslb", "edge", "control", "demo")
WINGS = ("gslb", "edge", "control")
MAX_LINES = 600
MAX_MODULES = 32


def _modules(pkg: str) -> list[tuple[str, Path]]:
    """(dotted name, path) of every module of a top-level package, subpackages included."""
    out = []
    for path in sorted((ROOT / pkg).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for module, path in _modules(pkg):
            package = module if path.stem == "__init__" else module.rpartition(".")[0]
            deps: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                    names = [node.module] if node.module else [a.name for a in node.names]
                    deps.update(f"{base}.{n}" for n in names)
                elif isinstance(node, ast.ImportFrom) and node.module:
                    if node.module.split(".")[0] in PACKAGES:
                        deps.add(node.module)
                        # `from edge.cache import ranges` depends on edge.cache.ranges
                        deps.update(f"{node.module}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
            graph[module] = deps
    return graph


def test_wings_import_only_themselves_and_cdnkit():
    wrong = []
    for module, deps in _graph().items():
        home = module.split(".")[0]
        allowed = {home, "cdnkit"} if home in WINGS else {"cdnkit"} if home == "cdnkit" else None
        if allowed is None:
            continue                      # demo is the integration layer
        wrong += [f"{module} imports {d}" for d in deps if d.split(".")[0] not in allowed]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if dep not in graph:
                continue
            if state.get(dep) == "open":
                chain = path + [module]
                cycles.append(" -> ".join(chain[chain.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(cycles)


def test_no_module_is_over_600_lines():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for pkg in PACKAGES
            for _, p in _modules(pkg)
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)


def test_families_of_modules_have_their_own_package():
    wrong = []
    for folder in sorted({p.parent for pkg in PACKAGES for _, p in _modules(pkg)}):
        stems = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
        if len(stems) > MAX_MODULES:
            wrong.append(f"{folder.relative_to(ROOT)}/: {len(stems)} modules, more than {MAX_MODULES}")
        wrong += [f"{folder.relative_to(ROOT)}/{b}.py beside {a}.py: give the family a package"
                  for a in stems for b in stems if b.startswith(a + "_")]
    assert not wrong, "\n".join(wrong)
