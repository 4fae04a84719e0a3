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


def _allowed(pkg, name):
    """Whether ``name`` is, or lies inside, a module ``pkg`` may import by exception."""
    return any(p == pkg and (name == m or name.startswith(m + ".")) for p, m in ALLOWED)


def _module_name(path):
    """The dotted name of the module at ``path`` (a package's ``__init__`` is the package)."""
    parts = ("cald_speech", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """Every module (or module attribute) ``path`` imports, as absolute dotted names.

    ``from X import a, b`` gives ``X.a`` and ``X.b`` (``a`` may be a sub-package:
    ``from cald_speech import tasks`` imports ``cald_speech.tasks``), ``from X import *``
    gives ``X``; relative imports are resolved against the importing module's package.
    """
    tree = ast.parse(path.read_text())
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                assert node.level <= len(parts), f"{path}: relative import beyond the package"
                anchor = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            yield from (base if a.name == "*" else f"{base}.{a.name}" for a in node.names)
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
        target = name.split(".")[1]
        if target == "testing" and pkg != "testing":
            bad.append(name)            # test fixtures only in tests and doctest examples
        if target in FORBIDDEN.get(pkg, ()) and not _allowed(pkg, name):
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
