"""Import cycles between the modules of a package, found with ``ast`` (nothing is imported).

    python scripts/import_cycles.py            # evosearch; exit code 1 when there is a cycle
    python scripts/import_cycles.py --package evosearch --root .

Every ``import``/``from ... import`` counts, also inside functions (a lazy import is still a
dependency), except under ``if TYPE_CHECKING:`` (never executed). ``from pkg import name`` is
an edge to ``pkg.name`` when that is a module, else to ``pkg``. A cycle is reported as a
strongly connected component of more than one module; the count printed is the number of
such components.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import networkx as nx


def module_files(root: Path, package: str) -> dict[str, Path]:
    """module name -> file, for every .py file of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its closest enclosing module that is part of the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    is_pkg = path.name == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        out.update(t for t in (_resolve(t, modules) for t in targets) if t and t != module)
    return out


def import_graph(root: Path, package: str) -> nx.DiGraph:
    modules = module_files(root, package)
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in imports_of(name, path, modules))
    return graph


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    """The strongly connected components with a cycle, each sorted, largest first."""
    comps = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    return sorted(comps, key=lambda c: (-len(c), c))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--package", default="evosearch", help="the package to check")
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="the folder holding it")
    args = p.parse_args(argv)
    graph = import_graph(Path(args.root), args.package)
    found = cycles(graph)
    print(f"{graph.number_of_nodes()} modules, {graph.number_of_edges()} imports, {len(found)} import cycles")
    for comp in found:
        sub = graph.subgraph(comp)
        example = nx.find_cycle(sub)
        print(f"  cycle among {len(comp)} modules: {', '.join(comp)}")
        print(f"    e.g. {' -> '.join([a for a, _ in example] + [example[0][0]])}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
