"""The layers stay apart: the harness never imports the reference implementation (it reaches every
implementation through the manifest and documented protocols), the contract package imports
neither, the harness's modules and packages import each other without circles, and the reference's
connector core and client library live in rooms of their own."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "harness"
CONTRACT = ROOT / "opensqt"
GENERATED = CONTRACT / "exchange" / "v1"
IMPLEMENTATION = ROOT / "implementation"
# Each room of the reference and the rooms it must not import. The connector core knows its exchange
# only through the interface (implementation.adapters.interface), never an adapter.
INTERFACE = "implementation.adapters.interface"
ROOMS: dict[str, tuple[str, ...]] = {
    "connector_core": (
        "implementation.client_library",
        "implementation.connector",
        "implementation.adapters",
    ),
    "client_library": (
        "implementation.connector_core",
        "implementation.connector",
        "implementation.adapters",
    ),
    "contract": (
        "implementation.connector_core",
        "implementation.client_library",
        "implementation.adapters",
        "implementation.connector",
    ),
    "adapters": ("implementation.connector_core", "implementation.connector"),
}


def imported_modules(source: str, module: str, filename: str = "<source>") -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the source, at any depth (functions included); a relative
    import is resolved against `module`, the dotted name of the file."""
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            yield node.lineno, base
            for alias in node.names:  # `from harness.perf import probes` imports harness.perf.probes
                yield node.lineno, f"{base}.{alias.name}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(folder: Path, skip: Path | None = None) -> Iterator[Path]:
    for path in sorted(folder.rglob("*.py")):
        if skip is None or skip not in path.parents:
            yield path


def forbidden_imports(folder: Path, forbidden: tuple[str, ...], skip: Path | None = None) -> list[str]:
    found = []
    for path in sources(folder, skip):
        for line, name in imported_modules(path.read_text(encoding="utf-8"), module_name(path), str(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    return sorted(set(found))


def import_graph(folder: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (a package's __init__ counts as a module)."""
    modules = {module_name(path): path for path in sources(folder)}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for _, target in imported_modules(path.read_text(encoding="utf-8"), name, str(path)):
            if target in modules and target != name and target.startswith(package):
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_harness_never_imports_the_implementation() -> None:
    found = forbidden_imports(HARNESS, ("implementation",))
    assert not found, "the harness must reach implementations only through the manifest:\n" + "\n".join(found)


def test_the_contract_package_imports_neither_side() -> None:
    found = forbidden_imports(CONTRACT, ("implementation", "harness", "specs"), skip=GENERATED)
    assert not found, "opensqt/ belongs to neither the harness nor the implementation:\n" + "\n".join(found)


def test_the_harness_has_no_import_circles() -> None:
    # a package importing its own submodules (harness.perf -> harness.perf.probes) is not a circle
    graph = import_graph(HARNESS, "harness")
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not (name + ".").startswith(t + ".")}
    found = cycles(graph)
    assert not found, "import circles in harness/: " + "; ".join(" <-> ".join(group) for group in found)


def package_graph(graph: dict[str, set[str]], root: str) -> dict[str, set[str]]:
    """The module graph with every module of a subpackage of `root` merged into that subpackage
    (harness.perf.fanout -> harness.perf); modules directly in `root` stay nodes of their own."""

    def node(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 else module

    merged: dict[str, set[str]] = {}
    for name, targets in graph.items():
        merged.setdefault(node(name), set())
        merged[node(name)] |= {node(t) for t in targets if node(t) != node(name) and node(t) != root}
    return merged


def test_the_harness_packages_have_no_import_circles() -> None:
    found = cycles(package_graph(import_graph(HARNESS, "harness"), "harness"))
    assert not found, "import circles between harness packages: " + "; ".join(
        " <-> ".join(group) for group in found
    )


def test_the_reference_rooms_stay_apart() -> None:
    found = []
    for room, forbidden in ROOMS.items():
        found += [
            line
            for line in forbidden_imports(IMPLEMENTATION / room, forbidden)
            if not (room == "connector_core" and line.split(": imports ")[1].startswith(INTERFACE))
        ]
    assert not found, "the reference's rooms import across their walls:\n" + "\n".join(found)


def test_the_checks_see_what_they_look_for() -> None:
    # each check, given a source that breaks its rule, reports it
    lazy = "def f():\n    from implementation.clients import run\n"
    assert [name for _, name in imported_modules(lazy, "harness.x")] == [
        "implementation.clients",
        "implementation.clients.run",
    ]
    relative = "from ..doubles import mock_exchange\n"
    assert ("harness.doubles.mock_exchange") in [n for _, n in imported_modules(relative, "harness.perf.x")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # a circle between two packages that no two modules share is still a circle
    planted = {"h.p.x": {"h.q.y"}, "h.q.y": set(), "h.q.z": {"h.p.w"}, "h.p.w": set(), "h.top": {"h.p.x"}}
    assert cycles(planted) == []
    assert cycles(package_graph(planted, "h")) == [["h.p", "h.q"]]
