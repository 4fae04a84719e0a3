"""Test fixtures: tiny randomly initialised teachers shaped like public checkpoints.

For tests and documentation examples: the package code imports nothing from here, only
its doctests do.

Example
-------
>>> tiny_teacher("wavlm-base-plus").config.hidden_size
32
"""

import json
from pathlib import Path

import torch

from cald_speech.errors import ConfigError
from cald_speech.families import HEADS, family_class
from cald_speech.student.shapes import PUBLIC_SHAPES, public_config

__all__ = ["PUBLIC_SHAPES", "hub_ctc_folder", "public_config", "tiny_teacher"]

#: What a hub CTC checkpoint's preprocessor_config.json holds (wav2vec2-base-960h's keys).
HUB_PREPROCESSOR = {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
                    "padding_side": "right", "padding_value": 0.0, "sampling_rate": 16000}


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


def hub_ctc_folder(folder, shape="wav2vec2-base", do_normalize=False,
                   return_attention_mask=False, seed=0, head_scale=20.0, **overrides):
    """Writes a tiny CTC checkpoint with exactly the files the hub ships for a CTC model.

    ``config.json`` and ``model.safetensors`` (``save_pretrained``), ``vocab.json`` (the
    32 units of ``facebook/wav2vec2-base-960h``: ``<pad>`` = 0, ``<s>``, ``</s>``,
    ``<unk>``, ``|``, upper-case letters, ``'``), ``tokenizer_config.json``,
    ``special_tokens_map.json`` and ``preprocessor_config.json``; random weights.

    Arguments
    ---------
    folder : str or os.PathLike
        Where to write (created).
    shape : str
        A key of :data:`PUBLIC_SHAPES` (the family and CNN style).
    do_normalize, return_attention_mask : bool
        The feature extractor settings written to ``preprocessor_config.json``.
    seed : int
        Seed of the weights.
    head_scale : float
        Factor on the CTC head's weights, so that a random model's argmax path moves
        between many units (a transcript with letters and words to compare).
    **overrides
        Config values (e.g. ``feat_extract_norm="layer", conv_bias=True``).

    Returns
    -------
    pathlib.Path
        The folder.

    Example
    -------
    >>> import os, tempfile
    >>> folder = hub_ctc_folder(tempfile.mkdtemp(), "hubert-large-ll60k", do_normalize=True)
    >>> sorted(os.listdir(folder))  # doctest: +NORMALIZE_WHITESPACE
    ['config.json', 'model.safetensors', 'preprocessor_config.json',
     'special_tokens_map.json', 'tokenizer_config.json', 'vocab.json']
    """
    from cald_speech.data.hub_tokenizer import ENGLISH_VOCAB, write_hub_vocabulary

    folder = Path(folder)
    values = {"vocab_size": len(ENGLISH_VOCAB), "pad_token_id": 0, "bos_token_id": 1,
              "eos_token_id": 2, **overrides}
    model = tiny_teacher(shape, head="ctc", seed=seed, **values)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    model.save_pretrained(folder, safe_serialization=True)
    write_hub_vocabulary(folder)
    preprocessor = {**HUB_PREPROCESSOR, "do_normalize": bool(do_normalize),
                    "return_attention_mask": bool(return_attention_mask)}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return folder
