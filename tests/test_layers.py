"""The package's import graph: no circles, and no import from a lower layer to a higher one.

The layer order is read from README.md's Development section, so the README and the code
cannot drift apart. Imports inside functions count too: hiding an import in a function does
not remove the dependency, it only delays it.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medvlm"


@functools.cache
def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    """Module -> the medvlm modules it imports (`from pkg import submodule` counts as the submodule)."""
    mods = modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                subs = {f"{base}.{a.name}" for a in node.names} & mods.keys()
                targets |= subs | ({base} if len(subs) < len(node.names) else set())
        edges[name] = {t for t in targets if t in mods and t != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def readme_layers() -> tuple[list[str], set[str]]:
    """(layers lowest first, foundation modules) from the README's Development section."""
    text = (ROOT / "README.md").read_text()
    line = re.search(r"Layout follows the data flow[^\n]*(?:\n  [^\n]+)*", text)
    assert line, "README.md's Development section must state the layer order ('Layout follows the data flow ...')"
    layers_part, _, foundation_part = line.group(0).partition(";")
    layers = re.findall(r"`(\w+)`", layers_part)
    return layers, set(re.findall(r"`(\w+)`", foundation_part))


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "medvlm"


def test_the_import_graph_has_no_circles():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_readme_names_every_package_once():
    layers, foundation = readme_layers()
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert len(layers) == len(set(layers))
    assert packages <= set(layers), f"packages missing from README's layer order: {packages - set(layers)}"
    assert set(layers) | foundation <= {layer_of(m) for m in modules()}


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_point_down_the_readme_layer_order(module):
    layers, foundation = readme_layers()
    mine = layer_of(module)
    if mine in foundation or mine == "medvlm":
        up = [t for t in graph()[module] if layer_of(t) not in foundation | {"medvlm"}]
        assert not up, f"{module} sits under every layer but imports {up}"
        return
    assert mine in layers, f"{module}: layer '{mine}' is not in README's layer order"
    rank = {name: i for i, name in enumerate(layers)}
    upward = [t for t in graph()[module]
              if layer_of(t) in rank and mine in rank and rank[layer_of(t)] > rank[mine]]
    assert not upward, f"{module} ({mine}) imports higher layers: {upward}"


def unexplained_lazy_imports() -> list[str]:
    """Imports inside functions with no `# lazy: why` on their line, or above their group of imports."""
    found = []
    for path in sorted(modules().values()):
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            imports = [n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))]
            spanned = {i for n in imports for i in range(n.lineno, n.end_lineno + 1)}
            for node in imports:
                above = node.lineno - 1
                while above in spanned or (above >= 1 and not lines[above - 1].strip()):
                    above -= 1
                if not any("# lazy:" in text for text in lines[max(above, 1) - 1:node.end_lineno]):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_imports_inside_functions_say_why_they_are_lazy():
    assert unexplained_lazy_imports() == []
