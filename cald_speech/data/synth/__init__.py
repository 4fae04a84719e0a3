"""Offline synthetic speech corpora in the real LibriSpeech and SLURP layouts (``cald-synth``).

One module per stage: :mod:`.options` (options, the shared data folder, the voices of
each split), :mod:`.texts` (reading and choosing sentences), :mod:`.render`
(augmentation, speaking, FLAC files, worker processes), :mod:`.bookkeeping`
(``metadata.json``, ``utterances.tsv``, ``README.md``, summaries), :mod:`.corpora` (the
two corpus builders) and :mod:`.cli` (the command line). The voice identities and
their engines are in :mod:`cald_speech.data.voices`. The package imports only data-side
modules (``cald_speech.data.voices``, ``text``, ``slurp``, ``audio``),
:mod:`cald_speech.errors` and the package version: never models, training or inference.
Its names load on first use, so that ``cald-synth --help`` answers at once.
"""

from cald_speech import lazy_exports

#: name -> the module that defines it (imported on first use)
_EXPORTS = {
    **dict.fromkeys(("FORMAT_VERSION", "METADATA_FILE", "UTTERANCES_FILE", "format_summary"),
                    "bookkeeping"),
    **dict.fromkeys(("build_parser", "main"), "cli"),
    **dict.fromkeys(("CHAPTER_SIZE", "synthesize_librispeech", "synthesize_slurp"), "corpora"),
    **dict.fromkeys(("LIBRISPEECH_SPLITS", "SLURP_SPLITS", "SynthOptions", "assign_voices",
                     "default_data_dir", "voice_split", "voice_weights"), "options"),
    **dict.fromkeys(("augment", "telephone"), "render"),
    "CHARS_PER_SECOND": "texts",
    "list_voices": "cald_speech.data.voices",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
