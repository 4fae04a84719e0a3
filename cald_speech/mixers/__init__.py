"""Linear-time token mixers, each a drop-in for self-attention.

``mamba2`` (a mamba-ssm-compatible block and its SSM core), ``bimamba2`` (CALD's
bidirectional mixers), ``linear_attention``, ``linformer``, ``attention`` (softmax, the
reference), ``ops/`` (each kernel's fused path beside its PyTorch path and reference).
Leaves: they import only mixers and errors, no model or task code.

``build_mixer(name, hidden_size, num_heads, **cfg)`` builds one by name so that
recipes choose a mixer from YAML; ``register_mixer`` adds a new one.

Example
-------
>>> "identity" in available_mixers()
False
"""

import inspect
import logging

from cald_speech.errors import ConfigError
from cald_speech.mixers.base import Mixer

_REGISTRY = {}
logger = logging.getLogger(__name__)


def register_mixer(cls):
    """Class decorator adding a :class:`Mixer` subclass to the registry under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Mixer)):
        raise TypeError(f"{cls!r} is not a Mixer subclass")
    _REGISTRY[cls.name] = cls
    return cls


def available_mixers():
    """Sorted names of the registered mixers."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_mixer_class(name):
    """The registered :class:`Mixer` subclass called ``name``.

    Example
    -------
    >>> get_mixer_class("attention").name
    'attention'
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown mixer '{name}'; available: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def build_mixer(name, hidden_size, num_heads, **cfg):
    """Builds a mixer by name.

    Arguments
    ---------
    name : str
        A name from :func:`available_mixers`.
    hidden_size : int
        Model width.
    num_heads : int
        Heads of the attention being replaced.
    **cfg
        Mixer-specific options.

    Returns
    -------
    Mixer
    """
    cls = get_mixer_class(name)
    try:
        inspect.signature(cls).bind(hidden_size=hidden_size, num_heads=num_heads, **cfg)
    except TypeError as exc:
        options = [p for p in inspect.signature(cls).parameters if p not in ("self",)]
        raise ConfigError(f"mixer '{name}': {exc}; its options are {', '.join(options)}") from None
    return cls(hidden_size=hidden_size, num_heads=num_heads, **cfg)


def build_saved_mixer(cfg):
    """Rebuilds a mixer from a saved :meth:`Mixer.mixer_config`.

    Execution options (:attr:`Mixer.execution_options`: kernel path, chunk size) that
    older saved models still carry are ignored, so a model saved with ``impl="torch"``
    on a CPU runs its fused kernels on a GPU; set them with ``$CALD_SSD_IMPL`` instead.

    Example
    -------
    >>> m = build_saved_mixer({"name": "bimamba2", "hidden_size": 8, "num_heads": 2,
    ...                        "d_state": 4, "impl": "torch", "chunk_size": 16})
    >>> m.execution_config()
    {'impl': None, 'chunk_size': None}
    """
    cfg = dict(cfg)
    cls = get_mixer_class(cfg.pop("name"))
    dropped = {k: cfg.pop(k) for k in cls.execution_options if k in cfg}
    if any(v is not None for v in dropped.values()):
        logger.info("mixer '%s': ignoring saved execution options %s", cls.name, dropped)
    return build_mixer(cls.name, **cfg)


def _load_builtin():
    # Imported lazily so that the registry module stays free of import cycles.
    import importlib

    for mod in ("bimamba2", "linear_attention", "linformer", "attention"):
        try:
            importlib.import_module(f"cald_speech.mixers.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cald_speech.mixers.{mod}":
                raise


__all__ = ["Mixer", "available_mixers", "build_mixer", "build_saved_mixer", "get_mixer_class",
           "register_mixer"]
