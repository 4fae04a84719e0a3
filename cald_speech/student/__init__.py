"""Students: transformers speech encoders whose self-attention runs as linear-time mixers.

The modules: :mod:`~.model` (:class:`Student`, the mixer adapter and the padding mask it
gets), :mod:`~.files` (model folders on disk: config, weights, strict loading),
:mod:`~.io` (:func:`load_model`, :func:`package_model`), :mod:`~.conversion`
(:func:`convert`), :mod:`~.shapes` (public checkpoint shapes), :mod:`~.report` (where the
parameters go) and :mod:`~.cli` (``cald-convert``).

The package imports mixers, families, features, errors and cli, never tasks, distill,
recipes, inference or data. Its names load on first use, so that ``cald-convert --help``
needs no model code.
"""

from cald_speech import lazy_exports

#: name -> the module that defines it (imported on first use)
_EXPORTS = {
    **dict.fromkeys(("check_conversion", "convert"), "conversion"),
    **dict.fromkeys(("load_strict", "read_config", "respect_umask", "weights_file"), "files"),
    **dict.fromkeys(("load_model", "package_model"), "io"),
    **dict.fromkeys(("FRAME_MASK_IMPLEMENTATION", "MixerAttention", "Student", "encoder_layers",
                     "frame_padding_mask", "install_mixers", "model_family",
                     "supported_class"), "model"),
    **dict.fromkeys(("format_table", "module_kind", "parameter_table",
                     "public_parameter_counts"), "report"),
    **dict.fromkeys(("PUBLIC_SHAPES", "public_config"), "shapes"),
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
