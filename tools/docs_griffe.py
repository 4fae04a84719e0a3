"""Griffe extension for the API reference (``make docs``): SpeechBrain-style docstrings.

The package's docstrings follow SpeechBrain: numpy sections named ``Arguments`` and
``Example`` (numpy's own names are ``Parameters`` and ``Examples``), and Sphinx roles
(``:func:`~cald_speech.x.y```) for cross-references. This extension renames the two
sections before the docstrings are parsed and turns each role into a link of the API
reference where its target is a documented object of the package, else into inline code.
It changes what mkdocstrings renders, never the package.
"""

import re

import griffe

SECTIONS = {"Example": "Examples", "Arguments": "Parameters"}
_HEADER = re.compile(r"^([ \t]*)(Example|Arguments)[ \t]*\n([ \t]*)(-+)[ \t]*$", re.M)
_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):"
                   r"`(~?)([\w.]+)(?:\(\))?`")


def _rename_sections(text):
    return _HEADER.sub(lambda m: f"{m[1]}{SECTIONS[m[2]]}\n{m[3]}{'-' * len(SECTIONS[m[2]])}",
                       text)


def _documented(collection, path):
    """Whether ``path`` names a public object of the package that the reference renders."""
    if not path.startswith("cald_speech") or any(p.startswith("_") for p in path.split(".")):
        return False
    try:
        obj = collection[path]
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False
    try:
        return obj.is_module or bool(obj.docstring)
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False


def _candidates(obj, target):
    """Full paths a role's target may mean, seen from ``obj`` (as Sphinx resolves them)."""
    module = obj if obj.is_module else obj.module
    scopes = [module.path]
    if not module.is_package and module.parent is not None:
        scopes.append(module.parent.path)
    if not obj.is_module:
        cls = obj if obj.is_class else (obj.parent if obj.parent.is_class else None)
        if cls is not None:
            scopes.insert(0, cls.path)
    if target.startswith("."):
        return [s + target for s in scopes]
    return [target] + [f"{s}.{target}" for s in scopes]


class SpeechBrainDocstrings(griffe.Extension):
    """Renames ``Arguments``/``Example`` sections and resolves Sphinx roles."""

    def on_object(self, *, obj, loader, **kwargs):  # noqa: D102
        if obj.is_alias or not obj.docstring:
            return
        collection = loader.modules_collection

        def role(match):
            short, target = match[1] == "~", match[2]
            for path in _candidates(obj, target):
                if _documented(collection, path):
                    shown = path.rsplit(".", 1)[-1] if short else target.lstrip(".")
                    return f"[`{shown}`][{path}]"
            shown = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
            return f"`{shown}`"

        obj.docstring.value = _ROLE.sub(role, _rename_sections(obj.docstring.value))
