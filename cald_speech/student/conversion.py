"""Conversion of a transformers speech encoder into a linear-time student.

:func:`convert` follows the parameter transfer of CALD (He & Garner, ICLR 2025): the
self-attention of every encoder layer is replaced by a linear-time mixer and every
other module — CNN feature encoder, feature projection, positional convolution, all
LayerNorms, feed-forward blocks, adapters, task head — is copied unchanged.
``init="attention"`` starts each mixer from the attention it replaces (MambaInLlama,
Wang et al. 2024: V->x, K->B, Q->C, O->out_proj for Mamba2; Q/K/V/O copied directly for
attention-shaped mixers); ``init="random"`` keeps the mixer's own initialisation, as in
the paper. ``keep_attention`` leaves chosen layers as the original softmax attention
(hybrid students).

WavLM's attention adds a gated relative position bias; a mixer has no such bias, so
it is dropped with the attention it belongs to. Layers kept as attention keep their
module intact (see :func:`cald_speech.student.model.install_mixers` for layer 0's embedding).

The ``cald-convert`` command (:mod:`cald_speech.student.cli`) converts a saved
transformers folder and prints where the parameters went
(:func:`~cald_speech.student.report.parameter_table`).

Example
-------
>>> import torch
>>> from cald_speech.testing import tiny_teacher
>>> teacher = tiny_teacher("wav2vec2-base", head="ctc")
>>> student = convert(teacher, mixer="bimamba2", init="attention", keep_attention=[1])
>>> student.layer_kinds()
['mixer:bimamba2', 'attention']
>>> wav = torch.randn(2, 800)
>>> student(wav).logits.shape == teacher(wav).logits.shape
True
"""

import copy
import os
from pathlib import Path

from torch import nn

from cald_speech.errors import ConfigError
from cald_speech.families import SUPPORTED_CLASSES
from cald_speech.features import set_waveform_settings, waveform_settings
from cald_speech.mixers import available_mixers, build_mixer, get_mixer_class
from cald_speech.student.io import load_model
from cald_speech.student.model import (
    Student,
    encoder_layers,
    install_mixers,
    model_family,
    supported_class,
)

INITS = ("attention", "random")


def _mixer_defaults(mixer, init, hidden_size, num_heads):
    """Options a mixer needs to take attention weights (e.g. bimamba2's MambaInLlama shape)."""
    if init != "attention":
        return {}
    return dict(get_mixer_class(mixer).attention_init_config(hidden_size, num_heads))


def check_conversion(config, mixer="bimamba2", init="attention", keep_attention=(), **mixer_cfg):
    """Validates conversion settings against a model config, doing no conversion work.

    Builds one throwaway mixer (and, with ``init="attention"``, fills it from
    attention-shaped projections) so that option errors surface here.

    Arguments
    ---------
    config : transformers.PretrainedConfig
        Config of the model to convert.
    mixer, init, keep_attention, **mixer_cfg
        As in :func:`convert`.

    Returns
    -------
    tuple
        ``(keep, cfg)``: sorted kept layer indices and the full mixer options.

    Raises
    ------
    ConfigError
        On an unsupported architecture, unknown init or mixer, mixer options that do
        not fit the model, or layer indices out of range.

    Example
    -------
    >>> from cald_speech.student import public_config
    >>> check_conversion(public_config("wav2vec2-base", tiny=True), "bimamba2",
    ...                  keep_attention=[1])[0]
    [1]
    >>> check_conversion(public_config("wav2vec2-base", tiny=True), keep_attention=[5])
    Traceback (most recent call last):
    ...
    cald_speech.errors.ConfigError: keep_attention: layer 5 is out of range; the model has 2 ...
    """
    model_family(config)
    if init not in INITS:
        raise ConfigError(f"init must be one of {', '.join(INITS)}, got '{init}'")
    if not isinstance(mixer, str) or mixer not in available_mixers():
        raise ConfigError(
            f"unknown mixer '{mixer}'; available: {', '.join(available_mixers())}"
        )
    n_layers = config.num_hidden_layers
    if isinstance(keep_attention, (int, str)):
        keep_attention = [keep_attention]
    keep = set()
    for index in keep_attention:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ConfigError(f"keep_attention: layer indices must be integers, got {index!r}")
        if not 0 <= index < n_layers:
            raise ConfigError(
                f"keep_attention: layer {index} is out of range; the model has {n_layers} "
                f"encoder layers (0-{n_layers - 1})"
            )
        keep.add(index)
    hidden, heads = config.hidden_size, config.num_attention_heads
    if hidden % heads:
        raise ConfigError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    cfg = {**_mixer_defaults(mixer, init, hidden, heads), **mixer_cfg}
    probes = [nn.Linear(hidden, hidden) for _ in range(4)] if init == "attention" else None
    _build_mixer(mixer, hidden, heads, cfg, probes)
    return sorted(keep), cfg


def _build_mixer(mixer, hidden, heads, cfg, projections=None):
    """Builds a mixer (filled from attention projections when given), with clear errors."""
    try:
        module = build_mixer(mixer, hidden, heads, **cfg)
        if projections is not None:
            module.init_from_attention(*projections)
    except ConfigError as exc:
        raise ConfigError(f"mixer '{mixer}' with options {cfg}: {exc}") from exc
    except NotImplementedError as exc:
        raise ConfigError(f"{exc}") from exc
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"mixer '{mixer}' cannot be built for hidden_size {hidden}, {heads} heads with "
            f"options {cfg}: {exc}"
        ) from exc
    return module


def convert(model, mixer="bimamba2", init="attention", keep_attention=(), **mixer_cfg):
    """Makes a linear-time student from a transformers wav2vec2 / HuBERT / WavLM model.

    The teacher is not modified: the student holds copies of its weights.

    Arguments
    ---------
    model : transformers.PreTrainedModel or str or os.PathLike
        One of :data:`cald_speech.families.SUPPORTED_CLASSES` (with or without a CTC or
        classification head), or a local folder holding one.
    mixer : str
        Registered mixer name (:func:`cald_speech.mixers.available_mixers`).
    init : str
        ``"attention"``: each mixer starts from the Q/K/V/O projections of the
        attention it replaces (the mixer's options default to the shape that allows
        it, e.g. bimamba2's ``attention_init_config``); ``"random"``: the mixer's own
        initialisation.
    keep_attention : iterable of int
        Encoder layers (0-based) that keep their softmax attention.
    **mixer_cfg
        Mixer options (override the ``init="attention"`` defaults).

    Returns
    -------
    Student
        Same training/eval mode, device and dtype as the teacher.

    Raises
    ------
    ConfigError
        Before any copy is made, on bad settings (see :func:`check_conversion`).

    Example
    -------
    >>> import torch
    >>> from cald_speech.testing import tiny_teacher
    >>> teacher = tiny_teacher("wavlm-base-plus")
    >>> student = convert(teacher, mixer="attention", init="attention")
    >>> mixer = encoder_layers(student.model)[0].attention.mixer
    >>> torch.equal(mixer.q_proj.weight, encoder_layers(teacher)[0].attention.q_proj.weight)
    True
    """
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if isinstance(model, Student):
        raise ConfigError("the model is already a student; convert its teacher instead")
    if type(model).__name__ not in SUPPORTED_CLASSES or not isinstance(
        model, supported_class(type(model).__name__)
    ):
        raise ConfigError(
            f"unsupported architecture '{type(model).__name__}'; supported: "
            f"{', '.join(SUPPORTED_CLASSES)}"
        )
    keep, cfg = check_conversion(model.config, mixer, init, keep_attention, **mixer_cfg)
    config = model.config
    hidden, heads = config.hidden_size, config.num_attention_heads
    layers = encoder_layers(model)

    mixers = []
    for i, layer in enumerate(layers):
        if i in keep:
            mixers.append(None)
            continue
        attention = layer.attention
        projections = None
        if init == "attention":
            projections = (attention.q_proj, attention.k_proj, attention.v_proj,
                           attention.out_proj)
        module = _build_mixer(mixer, hidden, heads, cfg, projections)
        weight = attention.q_proj.weight
        mixers.append(module.to(device=weight.device, dtype=weight.dtype))

    student_model = copy.deepcopy(model)
    for param in student_model.parameters():
        param.grad = None
    install_mixers(student_model, mixers)
    student_model.train(model.training)
    set_waveform_settings(student_model, waveform_settings(model))  # the teacher's input

    cald = {
        "format_version": 1,
        "source_class": type(model).__name__,
        "source": str(getattr(model, "name_or_path", "") or ""),
        "init": init,
        "keep_attention": keep,
        "attn_implementation": config._attn_implementation,
        "mixers": [None if m is None else m.mixer_config() for m in mixers],
    }
    source = cald["source"] if cald["source"] and Path(cald["source"]).is_dir() else None
    return Student(student_model, cald, source_path=source)
