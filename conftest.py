"""Tests that read the shared offline data skip, with the reason, where it is absent.

The data (sentence lists, SLURP annotations) lives in ``$CALD_SPEECH_DATA`` or in
``shared/data`` beside the repository (:func:`cald_speech.data.synth.default_data_dir`).
Tests marked ``shared_data`` and the doctests of the synthesizer package
(:mod:`cald_speech.data.synth`, which synthesize from those sentence lists) need it; a
checkout without it runs everything else.
"""

from pathlib import Path

import pytest

import cald_speech.data.synth
from cald_speech.data.synth import default_data_dir

SHARED_DATA = default_data_dir()
HAVE_SHARED_DATA = (SHARED_DATA / "text" / "ljspeech_sentences.tsv").is_file()
SYNTH_PACKAGE = Path(cald_speech.data.synth.__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if HAVE_SHARED_DATA:
        return
    skip = pytest.mark.skip(
        reason=f"shared data not found at {SHARED_DATA} (set $CALD_SPEECH_DATA)")
    for item in items:
        doctest_of_synth = (isinstance(item, pytest.DoctestItem)
                            and item.path.resolve().parent == SYNTH_PACKAGE)
        if doctest_of_synth or item.get_closest_marker("shared_data"):
            item.add_marker(skip)
