"""Students: transformers speech encoders whose self-attention runs as linear-time mixers.

The modules: :mod:`~.model` (:class:`Student`, the mixer adapter and the padding mask it
gets), :mod:`~.files` (model folders on disk: config, weights, strict loading),
:mod:`~.io` (:func:`load_model`, :func:`package_model`), :mod:`~.conversion`
(:func:`convert`), :mod:`~.shapes` (public checkpoint shapes), :mod:`~.report` (where the
parameters go) and :mod:`~.cli` (``cald-convert``).

The package imports mixers, families, features, errors and cli, never tasks, distill,
recipes, inference or data.
"""

from cald_speech.student.conversion import check_conversion, convert
from cald_speech.student.files import load_strict, read_config, respect_umask, weights_file
from cald_speech.student.io import load_model, package_model
from cald_speech.student.model import (
    FRAME_MASK_IMPLEMENTATION,
    MixerAttention,
    Student,
    encoder_layers,
    frame_padding_mask,
    install_mixers,
    model_family,
    supported_class,
)
from cald_speech.student.report import (
    format_table,
    module_kind,
    parameter_table,
    public_parameter_counts,
)
from cald_speech.student.shapes import PUBLIC_SHAPES, public_config

__all__ = [
    "FRAME_MASK_IMPLEMENTATION",
    "PUBLIC_SHAPES",
    "MixerAttention",
    "Student",
    "check_conversion",
    "convert",
    "encoder_layers",
    "format_table",
    "frame_padding_mask",
    "install_mixers",
    "load_model",
    "load_strict",
    "model_family",
    "module_kind",
    "package_model",
    "parameter_table",
    "public_config",
    "public_parameter_counts",
    "read_config",
    "respect_umask",
    "supported_class",
    "weights_file",
]
