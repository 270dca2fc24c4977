"""Every third-party package that ``evosearch/`` imports is declared in pyproject.toml.

The imports are read with ``ast`` (lazy ones inside functions included), their top-level module
names mapped to distributions with ``importlib.metadata.packages_distributions()``, and each must
be a core dependency or in an optional extra. An optional package that this environment lacks
(``packages_distributions()`` only knows installed ones) must be imported under
``try/except ImportError`` and be listed in an extra. And ``import evosearch`` must load no
package of an extra: what it imports is core.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]

# import name -> distribution, for optional packages whose distribution name differs from the import name
# and that may be absent here (packages_distributions() maps installed ones)
IMPORT_TO_DISTRIBUTION = {"ImageReward": "image-reward"}

IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(pyproject: Path = ROOT / "pyproject.toml") -> tuple[set[str], dict[str, set[str]]]:
    """(core dependencies, {extra: dependencies}) as normalised distribution names."""
    project = tomllib.loads(pyproject.read_text())["project"]

    def name(requirement: str) -> str:
        return normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))

    core = {name(r) for r in project.get("dependencies", [])}
    extras = {extra: {name(r) for r in reqs} for extra, reqs in project.get("optional-dependencies", {}).items()}
    return core, extras


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in IMPORT_ERRORS for t in types)


class _Imports(ast.NodeVisitor):
    """Absolute imports of a module: (top-level name, line, inside a try that catches ImportError)."""

    def __init__(self):
        self.depth = 0
        self.found: list[tuple[str, int, bool]] = []

    def visit_Try(self, node):
        guard = any(_catches_import_error(h) for h in node.handlers)
        self.depth += guard
        for stmt in node.body:
            self.visit(stmt)
        self.depth -= guard
        for stmt in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(stmt)

    visit_TryStar = visit_Try

    def visit_Import(self, node):
        for alias in node.names:
            self.found.append((alias.name.split(".")[0], node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node):
        if node.level == 0 and node.module:
            self.found.append((node.module.split(".")[0], node.lineno, self.depth > 0))


def third_party_imports(package: Path, own: str) -> list[tuple[str, str, bool]]:
    """(top-level module, "file:line", guarded) for every import of ``package`` that is not the
    standard library or ``own``."""
    out = []
    for path in sorted(package.rglob("*.py")):
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for top, line, guarded in visitor.found:
            if top in sys.stdlib_module_names or top in ("__future__", own):
                continue
            out.append((top, f"{path.relative_to(package.parent)}:{line}", guarded))
    return out


def undeclared(package: Path, own: str, core: set[str], extras: dict[str, set[str]],
               distributions: dict[str, list[str]]) -> list[str]:
    """One line per import of ``package`` whose distribution pyproject.toml does not declare."""
    allowed = core.union(*extras.values())
    problems = []
    for top, where, guarded in third_party_imports(package, own):
        names = {normalize(d) for d in distributions.get(top, [])}
        if not names:  # not installed here: only an optional, guarded import may be absent
            names = {normalize(IMPORT_TO_DISTRIBUTION.get(top, top))}
            if not guarded:
                problems.append(f"{where}: imports {top}, which is not installed, outside try/except ImportError")
                continue
            if not names & set().union(*extras.values()):
                problems.append(f"{where}: the optional import {top} ({', '.join(sorted(names))}) is in no extra")
                continue
        if not names & allowed:
            problems.append(f"{where}: imports {top} (distribution {', '.join(sorted(names))}), declared neither "
                            f"in dependencies nor in an extra of pyproject.toml")
    return problems


def test_every_third_party_import_of_evosearch_is_declared():
    core, extras = declared()
    found = {top for top, _, _ in third_party_imports(ROOT / "evosearch", "evosearch")}
    assert {"torch", "diffusers", "numpy"} <= found  # the scan sees the package's imports
    problems = undeclared(ROOT / "evosearch", "evosearch", core, extras,
                          importlib.metadata.packages_distributions())
    assert not problems, "\n".join(problems)


def test_the_check_flags_undeclared_and_unguarded_imports(tmp_path):
    pkg = tmp_path / "demo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import os\nfrom . import sub\nfrom demo.sub import x\nimport numpy\n")
    (pkg / "sub" / "__init__.py").write_text(
        "def f():\n"
        "    import scipy.special\n"                       # lazy, undeclared
        "try:\n"
        "    import not_installed_optional_pkg\n"          # guarded, in an extra: fine
        "except ImportError:\n"
        "    pass\n"
        "try:\n"
        "    import not_installed_undeclared_pkg\n"        # guarded, in no extra
        "except (ValueError, ModuleNotFoundError):\n"
        "    pass\n"
        "import not_installed_required_pkg\n"              # not guarded, not installed
    )
    distributions = {"numpy": ["numpy"], "scipy": ["scipy"]}
    problems = undeclared(pkg, "demo", {"numpy"}, {"opt": {"not-installed-optional-pkg"}}, distributions)
    assert len(problems) == 3, problems
    assert problems[0].startswith("demo/sub/__init__.py:2: imports scipy (distribution scipy), declared neither")
    assert "not_installed_undeclared_pkg" in problems[1] and "in no extra" in problems[1]
    assert "not_installed_required_pkg" in problems[2] and "outside try/except ImportError" in problems[2]
    # declaring scipy in an extra is enough
    assert len(undeclared(pkg, "demo", {"numpy"}, {"opt": {"not-installed-optional-pkg", "scipy"}},
                          distributions)) == 2


def test_import_evosearch_loads_only_core_dependencies():
    """The third-party packages evosearch imports that ``import evosearch`` loads are all core
    dependencies (an extra's package is only needed by the feature that uses it)."""
    code = "import json, sys, evosearch; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
                                           text=True).stdout))
    core, _ = declared()
    distributions = importlib.metadata.packages_distributions()
    ours = {top for top, _, _ in third_party_imports(ROOT / "evosearch", "evosearch")}
    assert "torch" in loaded & ours
    not_core = {top: distributions.get(top) for top in loaded & ours
                if not {normalize(d) for d in distributions.get(top, [])} & core}
    assert not not_core, f"import evosearch loads packages of no core dependency: {not_core}"


def test_import_evosearch_works_without_the_resource_module():
    """Windows has no ``resource`` module: importing evosearch and running a search's peak-memory
    accounting must still work (the CPU peak is then reported as 0)."""
    code = ("import sys; sys.modules['resource'] = None\n"  # makes `import resource` raise ImportError
            "import torch, evosearch\n"
            "from evosearch.search.context import peak_memory_bytes\n"
            "print(peak_memory_bytes(torch.device('cpu')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"
