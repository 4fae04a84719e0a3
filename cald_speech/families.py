"""The model families students are made from: one table for every module.

A family is a transformers ``model_type`` (``wav2vec2``, ``hubert``, ``wavlm``); its
classes are a prefix and a head suffix (``Hubert`` + ``ForCTC``). A leaf module: it
imports only transformers.

Example
-------
>>> family_class("hubert", "ctc").__name__
'HubertForCTC'
>>> family_of_class("WavLMForXVector")
'wavlm'
"""

import transformers

from cald_speech.errors import ConfigError

#: ``model_type`` -> prefix of its transformers class names.
PREFIXES = {"wav2vec2": "Wav2Vec2", "hubert": "Hubert", "wavlm": "WavLM"}

#: Head name -> class-name suffix (the heads every family has).
HEADS = {"model": "Model", "ctc": "ForCTC", "classification": "ForSequenceClassification"}

_EXTRA = {"wav2vec2": ("ForAudioFrameClassification", "ForXVector"),
          "hubert": (),
          "wavlm": ("ForAudioFrameClassification", "ForXVector")}

#: Family -> the names of its transformers classes a student can be made from.
FAMILIES = {
    family: tuple(prefix + suffix for suffix in (*HEADS.values(), *_EXTRA[family]))
    for family, prefix in PREFIXES.items()
}

#: Names of every transformers class a student can be made from.
SUPPORTED_CLASSES = tuple(name for names in FAMILIES.values() for name in names)


def check_family(family):
    """Returns ``family`` if it is a known family, else raises ConfigError naming them.

    Example
    -------
    >>> check_family("wavlm")
    'wavlm'
    """
    if family not in PREFIXES:
        raise ConfigError(f"unknown model family '{family}'; use one of "
                          f"{', '.join(PREFIXES)}")
    return family


def family_class(family, head="model"):
    """The transformers class of ``family`` with ``head`` (a key of :data:`HEADS`)."""
    if head not in HEADS:
        raise ConfigError(f"unknown head '{head}'; known: {', '.join(HEADS)}")
    return getattr(transformers, PREFIXES[check_family(family)] + HEADS[head])


def family_config_class(family):
    """The transformers config class of ``family`` (``Wav2Vec2Config``, ...)."""
    return getattr(transformers, PREFIXES[check_family(family)] + "Config")


def family_of_class(name):
    """The family of a supported transformers class name, or None."""
    for family, names in FAMILIES.items():
        if name in names:
            return family
    return None
