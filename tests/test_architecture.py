"""The package's layout holds: wings are layered, no module imports itself in a circle, stages stay on top.

The layers are declared once, in ``.importlinter``, and checked with import-linter
(``make lint``). The cycle check covers what a layers contract cannot: circles
between modules of the same wing.
"""

from __future__ import annotations

import configparser
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from conftest import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
WINGS = ("util", "data", "trust", "model", "photos", "tracking")


def lint_imports(src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO_ROOT / ".importlinter"), "--no-cache"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@functools.cache
def import_graph() -> grimp.ImportGraph:
    """The package's import graph, built once per test process."""
    return grimp.build_graph("crackcls", cache_dir=None)


def test_the_layers_contract_is_kept():
    result = lint_imports(REPO_ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: a low wing importing the config (a higher layer) is reported."""
    shutil.copytree(REPO_ROOT / "src" / "crackcls", tmp_path / "crackcls", ignore=shutil.ignore_patterns("__pycache__"))
    paths_module = tmp_path / "crackcls" / "util" / "paths.py"
    paths_module.write_text(paths_module.read_text() + "\nfrom crackcls import config  # noqa: E402\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "crackcls.util.paths -> crackcls.config" in result.stdout


def test_every_wing_is_in_the_contract_and_says_what_it_is_for():
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / ".importlinter")
    layers = parser["importlinter:contract:wings"]["layers"]
    package = REPO_ROOT / "src" / "crackcls"
    for wing in WINGS:
        assert f"crackcls.{wing}" in layers
        doc = (package / wing / "__init__.py").read_text().strip()
        assert doc.startswith('"""') and doc.count("\n") == 0, f"{wing}/__init__.py: a one-line docstring"
    flat = sorted(p.name for p in package.glob("*.py"))
    assert flat == ["__init__.py", "cli.py", "config.py"], f"modules outside the wings: {flat}"


def _cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import circle among the package's modules, or None."""
    modules = sorted(graph.modules)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                return path[path.index(imported) :] + [imported]
            if imported not in state and (found := visit(imported)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in modules:
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_circles():
    cycle = _cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_circle():
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    assert _cycle(graph) is None
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]


@pytest.mark.parametrize("stage", ["fetch", "split", "features", "train", "evaluate"])
def test_stages_are_imported_only_by_the_cli(stage):
    graph = import_graph()
    module = f"crackcls.stages.{stage}"
    assert graph.find_modules_that_directly_import(module) <= {"crackcls.cli"}
