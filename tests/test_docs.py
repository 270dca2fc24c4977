"""The documentation site: ``mkdocs build --strict`` passes (no broken link, anchor or API reference),
and every code block marked ``<!-- run -->`` in the guides (and the README) runs, on the bundled shapes
world, offline.

A runnable block is a fenced ```python block right after a line ``<!-- run -->``. The blocks of one
page run in order in one namespace (a page reads like a session); a line ``--8<-- "path"`` inside a
block is replaced by that file, as pymdownx.snippets does for the site."""

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN_MARK = "<!-- run -->"
_BLOCK = re.compile(r"^<!-- run -->\n```python\n(.*?)^```", re.S | re.M)
_SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.M)


def runnable_blocks(page: Path) -> list[str]:
    """The runnable blocks of a page, snippets expanded; a run mark not followed by a python fence is
    an error (it would silently run nothing)."""
    text = page.read_text(encoding="utf-8")
    blocks = _BLOCK.findall(text)
    marks = len(re.findall(f"^{RUN_MARK}$", text, re.M))
    assert marks == len(blocks), f"{page.name}: a {RUN_MARK} line not right before a ```python fence"
    return [_SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8"), b) for b in blocks]


PAGES = [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md")
                                     if re.search(f"^{RUN_MARK}$", p.read_text(encoding="utf-8"), re.M))


def test_pages_have_runnable_blocks():
    """The guides that promise runnable examples have them (a renamed marker would skip them all)."""
    names = {p.relative_to(ROOT).as_posix() for p in PAGES if runnable_blocks(p)}
    assert {"README.md", "docs/getting-started.md", "docs/extending.md", "docs/rewards.md", "docs/worlds.md"} <= names, names


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is in the dev and docs extras")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is in the dev and docs extras")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               NO_MKDOCS_2_WARNING="1")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    site = tmp_path / "site"
    for page in ("getting-started", "extending", "methods/evosearch", "benchmarks", "api/registry"):
        assert (site / page / "index.html").is_file(), page
    # the API reference is generated from the docstrings, and the benchmark rows are included
    assert "register_method" in (site / "api/registry/index.html").read_text(encoding="utf-8")
    assert "0.945 (0.99)" in (site / "methods/best-of-n/index.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", (site / "extending/index.html").read_text(encoding="utf-8"))
    assert "class HillClimb(SearchMethod):" in text  # the toy method's file, included whole


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_runnable_blocks(page, tmp_path, monkeypatch, restored_registry):
    monkeypatch.chdir(tmp_path)  # files a block writes land here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "docs_" + re.sub(r"\W", "_", page.relative_to(ROOT).with_suffix("").as_posix())
    module = types.ModuleType(name)  # a real module, so dataclasses and pickling find the page's classes
    monkeypatch.setitem(sys.modules, name, module)
    for k, block in enumerate(runnable_blocks(page)):
        code = compile(block, f"{page.relative_to(ROOT)} [block {k + 1}]", "exec")
        exec(code, module.__dict__)
