"""Offline synthetic speech corpora in the real LibriSpeech and SLURP layouts (``cald-synth``).

One module per stage: :mod:`.options` (options, the shared data folder, the voices of
each split), :mod:`.texts` (reading and choosing sentences), :mod:`.render`
(augmentation, speaking, FLAC files, worker processes), :mod:`.bookkeeping`
(``metadata.json``, ``utterances.tsv``, ``README.md``, summaries), :mod:`.corpora` (the
two corpus builders) and :mod:`.cli` (the command line). The voice identities and
their engines are in :mod:`cald_speech.data.voices`. The package imports only data-side
modules (``cald_speech.data.voices``, ``text``, ``slurp``, ``audio``),
:mod:`cald_speech.errors` and the package version: never models, training or inference.
"""

from cald_speech.data.synth.bookkeeping import (
    FORMAT_VERSION,
    METADATA_FILE,
    UTTERANCES_FILE,
    format_summary,
)
from cald_speech.data.synth.cli import build_parser, main
from cald_speech.data.synth.corpora import (
    CHAPTER_SIZE,
    synthesize_librispeech,
    synthesize_slurp,
)
from cald_speech.data.synth.options import (
    LIBRISPEECH_SPLITS,
    SLURP_SPLITS,
    SynthOptions,
    assign_voices,
    default_data_dir,
    voice_split,
    voice_weights,
)
from cald_speech.data.synth.render import augment, telephone
from cald_speech.data.synth.texts import CHARS_PER_SECOND
from cald_speech.data.voices import list_voices

__all__ = [
    "SynthOptions",
    "synthesize_librispeech",
    "synthesize_slurp",
    "list_voices",
    "assign_voices",
    "voice_weights",
    "voice_split",
    "augment",
    "telephone",
    "format_summary",
    "default_data_dir",
    "build_parser",
    "main",
    "LIBRISPEECH_SPLITS",
    "SLURP_SPLITS",
    "METADATA_FILE",
    "UTTERANCES_FILE",
    "FORMAT_VERSION",
    "CHAPTER_SIZE",
    "CHARS_PER_SECOND",
]
