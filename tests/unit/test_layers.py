"""Dependencies point down (DESIGN.md): cli -> pipeline/serve -> systems -> methods -> core."""

from __future__ import annotations

import ast
from pathlib import Path

import irlm

ROOT = Path(irlm.__file__).parent


def imported(path: Path) -> set[str]:
    """Every irlm module a file imports, at any depth (lazy imports inside functions count too); for
    `from M import x` both M and M.x, since x may be a module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n == "irlm" or n.startswith("irlm.")}


def files(under: str = "") -> list[Path]:
    return sorted((ROOT / under).rglob("*.py"))


def test_only_the_entry_point_imports_the_cli():
    cli = {ROOT / "cli.py", *files("cli")}
    offenders = [str(p.relative_to(ROOT)) for p in files() if p not in cli and "irlm.cli" in imported(p)]
    assert offenders == []


def test_methods_and_core_never_import_the_layers_above_them():
    above = {"irlm.cli", "irlm.pipeline", "irlm.stages", "irlm.serve", "irlm.systems"}
    layers = {ROOT / "cli.py", *files("cli"), ROOT / "pipeline.py", ROOT / "stages.py", ROOT / "systems.py",
              *files("serve")}  # fmt: skip
    low = [p for p in files() if p not in layers]
    offenders = {}
    for p in low:
        if hits := sorted(m for m in imported(p) if any(m == a or m.startswith(a + ".") for a in above)):
            offenders[str(p.relative_to(ROOT))] = hits
    assert offenders == {}


def test_methods_never_import_each_other():
    methods = [d.name for d in (ROOT / "methods").iterdir() if d.is_dir() and not d.name.startswith("_")]
    offenders = {}
    for name in methods:
        for p in files(f"methods/{name}"):
            others = {m for m in imported(p) for o in methods if o != name and m.startswith(f"irlm.methods.{o}")}
            if others:
                offenders[str(p.relative_to(ROOT))] = sorted(others)
    assert offenders == {}


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """module -> the irlm modules it imports (a package's own __init__ is not an edge of its children)."""
    names = {module_name(p): p for p in files()}
    graph = {}
    for name, path in names.items():
        graph[name] = {d for d in imported(path) if d in names and d != name and not name.startswith(d + ".")}
    return graph


def test_no_import_cycles():
    graph, seen, cycles = import_graph(), set(), []

    def visit(node: str, path: list[str]) -> None:
        for dep in graph[node]:
            if dep in path:
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in seen:
                visit(dep, path + [dep])
        seen.add(node)

    for name in graph:
        if name not in seen:
            visit(name, [name])
    assert cycles == []
