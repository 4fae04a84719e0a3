"""Test fixtures: tiny randomly initialised teachers shaped like public checkpoints.

For tests and documentation examples: the package code imports nothing from here, only
its doctests do.

Example
-------
>>> tiny_teacher("wavlm-base-plus").config.hidden_size
32
"""

import torch

from cald_speech.errors import ConfigError
from cald_speech.families import HEADS, family_class
from cald_speech.student.shapes import PUBLIC_SHAPES, public_config

__all__ = ["PUBLIC_SHAPES", "public_config", "tiny_teacher"]


def tiny_teacher(shape="wav2vec2-base", head="model", seed=0, **overrides):
    """A tiny randomly initialised teacher shaped like a public checkpoint, in eval mode.

    Arguments
    ---------
    shape : str
        A key of :data:`PUBLIC_SHAPES`.
    head : str
        ``"model"`` (encoder only), ``"ctc"`` or ``"classification"``.
    seed : int
        Seed of the weights (the global random state is left untouched).
    **overrides
        Config values, e.g. ``feat_extract_norm="layer"``.

    Example
    -------
    >>> type(tiny_teacher("hubert-large-ll60k", head="ctc")).__name__
    'HubertForCTC'
    """
    if head not in HEADS:
        raise ConfigError(f"unknown head '{head}'; known: {', '.join(HEADS)}")
    config = public_config(shape, tiny=True, **overrides)
    model_cls = family_class(config.model_type, head)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()
