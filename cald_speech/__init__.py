"""cald-speech: linear-time students of transformer speech encoders, trained with CALD.

Packages, arrows pointing down only: ``tasks`` (recipes: ASR, intents, layer
distillation, probes) -> ``distill`` (losses, guidance, the shared Brain),
``gendistiller`` (GenDistiller and DistilHuBERT layer students) and ``student``
(conversion, model, files) -> ``mixers`` (linear-time token mixers and their kernels).
Beside them: ``data`` (corpora, manifests, audio; knows no models), ``inference``
(transcription and classification; no training code), ``bench`` (benchmarks), ``demo``
(the ``make demo`` pipeline). Shared
leaves: ``errors``, ``cli`` (console-script conventions), ``families``, ``features``
(frozen-CNN features); ``frontend`` and ``pretrain`` build the offline starting model.
"""

__version__ = "0.1.0"



def lazy_exports(space, exports):
    """``(__getattr__, __dir__)`` for a package whose names load on first use.

    Arguments
    ---------
    space : dict
        The package's ``globals()``; a loaded name is kept there (imported once).
    exports : dict
        Name -> the module that defines it: a submodule of the package
        (``"transcriber"``) or a full module path (``"cald_speech.data.voices"``).

    Example
    -------
    >>> space = {"__name__": "demo_pkg"}
    >>> getattr_, dir_ = lazy_exports(space, {"join": "os.path"})
    >>> getattr_("join")("a", "b"), "join" in space, "join" in dir_()
    ('a/b', True, True)
    """
    import importlib

    package = space["__name__"]

    def __getattr__(name):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        path = module if "." in module else f"{package}.{module}"
        value = getattr(importlib.import_module(path), name)
        space[name] = value
        return value

    def __dir__():
        return sorted(set(space) | set(exports))

    return __getattr__, __dir__
