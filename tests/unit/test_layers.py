"""The layers stay apart: the core imports no Prefect, Dask or Jupyter; the test API imports
nothing of the pipeline; the command line's --help imports no Prefect; ``__all__`` is true."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import placeholder_api
import placeholder_etl
from tests.helpers import ROOT

HEAVY = ("prefect", "dask", "distributed", "prefect_dask", "IPython", "papermill", "matplotlib")


def _imported_by(code: str) -> set[str]:
    """Top-level packages a fresh interpreter has imported after running ``code``."""
    probe = f"{code}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def _modules(package) -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        if not info.name.endswith("__main__")
    ]


def test_the_core_imports_no_prefect_dask_or_jupyter() -> None:
    core = [m for m in _modules(placeholder_etl) if m.startswith("placeholder_etl.core.")]
    assert len(core) >= 10
    imported = _imported_by("; ".join(f"import {m}" for m in core))
    assert imported.isdisjoint(HEAVY), imported & set(HEAVY)


def test_the_command_line_imports_no_prefect_until_it_runs() -> None:
    imported = _imported_by("import placeholder_etl.cli")
    assert imported.isdisjoint(HEAVY), imported & set(HEAVY)


def test_the_test_api_is_a_package_of_its_own() -> None:
    imported = _imported_by("import placeholder_api, placeholder_api.cli")
    assert "placeholder_etl" not in imported
    assert imported.isdisjoint(HEAVY)


def _sources_outside(module_file: Path) -> str:
    """The project's code and notebooks, but for ``module_file``."""
    files = [
        path
        for folder in ("src", "tests", "flows", "notebooks", "benchmarks")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".ipynb")
        and path != module_file
        and not any(part.startswith(".venv") for part in path.parts)  # as in a fresh clone
    ]
    return "\n".join(path.read_text() for path in files)


@pytest.mark.parametrize("module", _modules(placeholder_etl) + _modules(placeholder_api))
def test_all_lists_what_the_module_defines_and_others_use(module) -> None:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    if names is None:
        return
    assert [name for name in names if not hasattr(mod, name)] == []
    elsewhere = _sources_outside(Path(mod.__file__).resolve())
    assert [name for name in names if not re.search(rf"\b{name}\b", elsewhere)] == []


SRC = ROOT / "src" / "placeholder_etl"
#: The most lines a module of the pipeline may have: one job each.
MAX_LINES = 400


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported (not those inside functions or classes,
    nor under ``if TYPE_CHECKING:``)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse):
                yield from _top_level_imports(block)
        elif isinstance(node, ast.With):
            yield from _top_level_imports(node.body)


def _import_graph(src: Path) -> dict[str, set[str]]:
    """Each module of the package in ``src`` -> the package's modules it imports at its top.

    ``from placeholder_etl.core import pages`` counts as an import of
    ``placeholder_etl.core.pages`` when that is a module, else of the package.
    """
    files = {_module_name(path, src): path for path in src.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _top_level_imports(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
                continue
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[name] = {edge for edge in edges if edge in files and edge != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected parts of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                part.append(member)
                if member == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_import_graph_reads_every_form_of_import(tmp_path) -> None:
    package = tmp_path / "pkg"
    (package / "core").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/a.py": "from pkg.core import b\nfrom pkg.core.c import f\n",
        "core/b.py": "import pkg.core.c\nif TYPE_CHECKING:\n    from pkg import flow\n",
        "core/c.py": "from . import d\ndef f():\n    from pkg.core import a\n",
        "core/d.py": "from ..flow import run\n",
        "flow.py": "from pkg.core import a\n",
    }
    for name, text in sources.items():
        (package / name).write_text(text)
    graph = _import_graph(package)
    assert graph["pkg.core.a"] == {"pkg.core.b", "pkg.core.c"}
    assert graph["pkg.core.b"] == {"pkg.core.c"}  # not what is only imported to type-check
    assert graph["pkg.core.c"] == {"pkg.core.d"}  # not what a function imports
    assert _cycles(graph) == [["pkg.core.a", "pkg.core.b", "pkg.core.c", "pkg.core.d", "pkg.flow"]]


def test_no_module_imports_itself_through_others() -> None:
    """No module of placeholder_etl imports (at its top) a module that imports it back."""
    assert _cycles(_import_graph(SRC)) == []


def test_no_module_is_over_the_line_limit() -> None:
    """Every module of placeholder_etl is at most MAX_LINES long (the offenders are listed)."""
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in SRC.rglob("*.py")
    }
    assert {path: n for path, n in lengths.items() if n > MAX_LINES} == {}
