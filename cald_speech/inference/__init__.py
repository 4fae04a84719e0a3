"""Inference with packaged models: CTC transcription of audio of any length, intent labels.

The modules: :mod:`~.cnn_blocks` (the CNN front end in blocks), :mod:`~.long_form` (the
encoder over a whole long sequence), :mod:`~.windows` (windows and stitching),
:mod:`~.align` (CTC word alignment), :mod:`~.formats` (:class:`Transcript` as text, JSON,
SRT), :mod:`~.precision` (float32 or bfloat16 matrix products), :mod:`~.transcriber`
(:class:`Transcriber`), :mod:`~.classifier` (:class:`Classifier`), :mod:`~.progress`
(progress bars) and :mod:`~.cli` (``cald-transcribe``). Audio is read by
:func:`cald_speech.data.audio.load_audio`; ``cald-transcribe`` sets the process's
allocator with :func:`cald_speech.allocator.tune_allocator`.

The package imports data, errors, features, mixers and model loading
(:mod:`cald_speech.student`), never training code (brains, recipes, experiment).
"""

from cald_speech.inference.align import Word, align_words
from cald_speech.inference.classifier import Classifier
from cald_speech.inference.cli import build_parser, main
from cald_speech.inference.cnn_blocks import (
    DEFAULT_CNN_BLOCK_S,
    DEFAULT_NORM_WINDOW_S,
    cnn_features,
    cnn_geometry,
    padded_features,
)
from cald_speech.inference.formats import FORMATS, Transcript, to_srt
from cald_speech.inference.long_form import (
    DEFAULT_ENCODER_BLOCK,
    DEFAULT_PROJECTION_CACHE_MB,
    bimamba2_blockwise,
    lean_ctc_logits,
    lean_supported,
    long_form,
)
from cald_speech.inference.precision import PRECISIONS
from cald_speech.inference.transcriber import MODES, Transcriber, model_task
from cald_speech.inference.windows import (
    DEFAULT_OVERLAP_S,
    DEFAULT_WINDOW_S,
    stitch,
    window_plan,
)

__all__ = [
    "DEFAULT_CNN_BLOCK_S",
    "DEFAULT_ENCODER_BLOCK",
    "DEFAULT_NORM_WINDOW_S",
    "DEFAULT_OVERLAP_S",
    "DEFAULT_PROJECTION_CACHE_MB",
    "DEFAULT_WINDOW_S",
    "FORMATS",
    "MODES",
    "PRECISIONS",
    "Classifier",
    "Transcriber",
    "Transcript",
    "Word",
    "align_words",
    "bimamba2_blockwise",
    "lean_ctc_logits",
    "lean_supported",
    "build_parser",
    "cnn_features",
    "cnn_geometry",
    "long_form",
    "main",
    "model_task",
    "padded_features",
    "stitch",
    "to_srt",
    "window_plan",
]
