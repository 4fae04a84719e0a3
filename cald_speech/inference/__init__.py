"""Inference with packaged models: CTC transcription of audio of any length, intent labels.

The modules: :mod:`~.cnn_blocks` (the CNN front end in blocks), :mod:`~.long_form` (the
encoder over a whole long sequence), :mod:`~.windows` (windows and stitching),
:mod:`~.align` (CTC word alignment), :mod:`~.formats` (:class:`Transcript` as text, JSON,
SRT), :mod:`~.precision` (float32 or bfloat16 matrix products), :mod:`~.transcriber`
(:class:`Transcriber`), :mod:`~.classifier` (:class:`Classifier`), :mod:`~.progress`
(progress bars) and :mod:`~.cli` (``cald-transcribe``). Audio is read by
:func:`cald_speech.data.audio.load_audio`; ``cald-transcribe`` sets the process's
allocator with :func:`cald_speech.allocator.tune_allocator`.

:mod:`~.settings` holds the defaults (importable without torch).

The package imports data, errors, features, mixers and model loading
(:mod:`cald_speech.student`), never training code (brains, recipes, experiment). Its
names load on first use, so that ``cald-transcribe --help`` needs no model code.
"""

import sys
import types

from cald_speech import lazy_exports

#: name -> the module that defines it (imported on first use)
_EXPORTS = {
    "Word": "align", "align_words": "align",
    "Classifier": "classifier",
    "build_parser": "cli", "main": "cli",
    "cnn_features": "cnn_blocks", "cnn_geometry": "cnn_blocks",
    "padded_features": "cnn_blocks",
    "Transcript": "formats", "to_srt": "formats",
    "DEFAULT_ENCODER_BLOCK": "long_form", "bimamba2_blockwise": "long_form",
    "lean_ctc_logits": "long_form", "lean_supported": "long_form", "long_form": "long_form",
    "DEFAULT_CNN_BLOCK_S": "settings", "DEFAULT_NORM_WINDOW_S": "settings",
    "DEFAULT_OVERLAP_S": "settings", "DEFAULT_PROJECTION_CACHE_MB": "settings",
    "DEFAULT_WINDOW_S": "settings", "FORMATS": "settings", "MODES": "settings",
    "PRECISIONS": "settings",
    "Transcriber": "transcriber", "model_task": "transcriber",
    "stitch": "windows", "window_plan": "windows",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


class _Package(types.ModuleType):
    """The package: ``long_form`` stays the function, though a submodule has its name
    (the import system would set the package attribute to the submodule)."""

    def __setattr__(self, name, value):
        if name == "long_form" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
