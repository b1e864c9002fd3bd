"""The layering of docs/ARCHITECTURE.md, checked against the code.

Every ``import`` in ``casreg/`` (at module level, inside functions, under
``TYPE_CHECKING``) is read from the source with ``ast``; the layer table is read from
docs/ARCHITECTURE.md, so the document and the check cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """``(module, line)`` for every module of ``known`` that ``name`` imports, wherever."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target, node.lineno


def import_graph(package: str) -> dict[str, dict[str, int]]:
    known = modules(package)
    return {name: dict(imported(name, path, known)) for name, path in known.items()}


def layer_table() -> dict[str, tuple[list[str], set[str]]]:
    """layer -> (module prefixes, the layers it may import), from docs/ARCHITECTURE.md."""
    text = DOC.read_text()
    section = text.split("## The layers and what each may import", 1)[1].split("\n## ", 1)[0]
    table: dict[str, tuple[list[str], set[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("layer", "") or set(cells[0]) <= {"-"}:
            continue
        table[cells[0]] = (re.findall(r"`([a-z_.]+)`", cells[1]), set(cells[2].split()))
    return table


def layer_of(module: str, table: dict[str, tuple[list[str], set[str]]]) -> str | None:
    """The layer whose module prefix is the longest match for ``module``."""
    best, best_len = None, -1
    for layer, (prefixes, _) in table.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = layer, len(p)
    return best


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_cycle_finder_finds_cycles() -> None:
    """The check below could fail: a two-module and a three-module cycle are found."""
    graph = {"a": {"b": 1}, "b": {"a": 1}, "c": {"d": 1}, "d": {"e": 1}, "e": {"c": 1}, "f": {"a": 1}}
    assert sorted(find_cycles(graph)) == [["a", "b"], ["c", "d", "e"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles_in_casreg() -> None:
    cycles = find_cycles(import_graph("casreg"))
    assert cycles == [], f"import cycles: {cycles}"


def test_the_layer_table_covers_every_module() -> None:
    table = layer_table()
    assert {"foundation", "storage", "content", "ledger", "governance", "maintenance", "facade"} <= set(table)
    unplaced = [m for m in modules("casreg") if layer_of(m, table) is None]
    assert unplaced == [], f"modules in no layer of docs/ARCHITECTURE.md: {unplaced}"
    for layer, (_, allowed) in table.items():
        assert allowed <= set(table), f"{layer} may import unknown layers {allowed - set(table)}"


def test_layers_import_only_downward() -> None:
    table = layer_table()
    graph = import_graph("casreg")
    wrong = []
    for module, targets in graph.items():
        mine = layer_of(module, table)
        assert mine is not None
        allowed = table[mine][1] | {mine}
        for target, line in targets.items():
            theirs = layer_of(target, table)
            if theirs not in allowed:
                wrong.append(f"{module} (line {line}, {mine}) imports {target} ({theirs})")
    assert wrong == [], "imports against docs/ARCHITECTURE.md:\n" + "\n".join(wrong)


def test_governance_and_maintenance_are_siblings() -> None:
    table = layer_table()
    assert "maintenance" not in table["governance"][1] and "governance" not in table["maintenance"][1]


def test_the_library_never_imports_the_cli() -> None:
    offenders = []
    for name, path in modules("casreg").items():
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{name}: {m}" for m in mods if m.split(".")[0] == "casreg_cli"]
    assert offenders == []


@pytest.mark.parametrize("layer", ["storage", "content", "ledger"])
def test_a_violation_would_be_reported(layer: str) -> None:
    """The layer check is not vacuous: an upward import from ``layer`` is caught."""
    table = layer_table()
    allowed = table[layer][1] | {layer}
    assert layer_of("casreg.registry", table) not in allowed
    assert layer_of("casreg.governance.lifecycle", table) not in allowed


KEY_SPELLINGS = re.compile(r"""["'](?:packs|index|manifests|refs|pointers|ledger/versions|ledger/events|"""
                           r"""ledger/compacted|policy/versions|gc/condemned|gc/rescued|gc/sweeping|signatures)/""")


def test_store_keys_are_spelled_only_in_the_key_module() -> None:
    """Every key the registry writes is built in casreg/keys.py (docs/ARCHITECTURE.md)."""
    offenders = []
    for name, path in modules("casreg").items():
        if name == "casreg.keys":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if KEY_SPELLINGS.search(code) and not code.lstrip().startswith(('"""', "``")):
                offenders.append(f"{name}:{i}: {line.strip()}")
    assert offenders == [], "\n".join(offenders)
