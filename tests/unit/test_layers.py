"""The house rules, checked: epctl's modules import each other in one direction (no cycles, also
through imports inside functions), and the pure modules (planning, validation, state machines,
shard ownership) import no I/O, so they stay testable directly (docs/design.md section 3)."""

from __future__ import annotations

import ast
from pathlib import Path

import epctl

ROOT = Path(epctl.__file__).parent
PURE = ["epctl.slices", "epctl.endpoints", "epctl.state", "epctl.probe.state", "epctl.probe.pacing",
        "epctl.probe.roles", "epctl.probe.credentials",
        "epctl.shard.ring", "epctl.sources.openstack_select", "epctl.sources.openstack_auth",
        "epctl.api.spec", "epctl.api.parse", "epctl.api.fields", "epctl.heap", "epctl.shard.fence",
        "epctl.orphans", "epctl.topology", "epctl.jsonkey"]
IO = {"aiohttp", "asyncio", "socket", "ssl", "grpc", "openstack", "kubernetes_asyncio", "urllib", "http",
      "subprocess", "prometheus_client"}
IO_ALLOWED = {"epctl.heap": {"asyncio"}}  # the keeper's task lives beside the pure policy


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (``from x import y`` counts y when it is a module)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {m for m in imports(path) if m in modules and m != name}
        # a package's __init__ is imported first by anything inside it: not an edge back to it
        edges[name] = {m for m in edges[name] if not name.startswith(m + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_pure_modules_do_no_io() -> None:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    for name in PURE:
        roots = {m.split(".")[0] for m in imports(modules[name])}
        assert not (roots & IO) - IO_ALLOWED.get(name, set()), f"{name} imports {sorted(roots & IO)}"
