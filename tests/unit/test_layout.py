"""The package's layout rules: which package may import which, and modules of a livable size.

Arrows point down only: recipes -> tasks -> distill/student -> mixers; data knows no
models; inference needs no training code; mixers know no model or task. Imports inside
docstring examples do not count (they are examples, not dependencies).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cald_speech"
MODULES = sorted(PACKAGE.rglob("*.py"))

#: package -> packages of cald_speech it must not import (at any depth, lazily or not)
FORBIDDEN = {
    "mixers": ("student", "tasks", "distill", "inference", "bench", "demo", "data",
               "features", "pretrain", "frontend", "gendistiller"),
    "data": ("mixers", "student", "tasks", "distill", "inference", "bench", "demo",
             "features", "pretrain", "frontend", "gendistiller"),
    "student": ("tasks", "distill", "inference", "bench", "demo", "data", "gendistiller"),
    "gendistiller": ("tasks", "distill", "inference", "bench", "demo", "data", "pretrain"),
    "distill": ("tasks", "inference", "bench", "demo", "gendistiller"),
    "inference": ("tasks", "distill", "bench", "demo", "pretrain", "frontend", "gendistiller"),
    "tasks": ("inference", "bench", "demo"),
    "pretrain": ("tasks", "distill", "inference", "bench", "demo", "mixers"),
    "bench": ("tasks", "distill", "demo", "pretrain", "frontend"),
    "demo": ("tasks", "distill", "student", "inference", "mixers", "pretrain", "frontend"),
    "allocator": ("mixers", "data", "student", "tasks", "distill", "inference", "bench", "demo",
                  "features", "pretrain", "frontend", "gendistiller"),
}
#: what inference may take from the tasks: the intent *model* (no training code)
ALLOWED = {("inference", "cald_speech.tasks.intent.model")}


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def _package(path):
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    pkg = _package(path)
    bad = []
    for name in _imports(path):
        if name.startswith("recipes"):
            bad.append(name)            # the package never imports a recipe
        if not name.startswith("cald_speech."):
            continue
        if name == "cald_speech.testing" and pkg != "testing":
            bad.append(name)            # test fixtures only in tests and doctest examples
        target = name.split(".")[1]
        if target in FORBIDDEN.get(pkg, ()) and (pkg, name) not in ALLOWED:
            bad.append(name)
    assert not bad, f"{path.relative_to(PACKAGE)} ({pkg}) imports {bad}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_livable(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 650, f"{path.relative_to(PACKAGE)} has {lines} lines; split it"


def test_every_package_says_what_it_holds():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 8, f"{init.relative_to(PACKAGE)} needs a docstring"
