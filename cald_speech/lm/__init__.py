"""Word n-gram language models for CTC beam search: built offline from plain text.

:func:`~cald_speech.lm.build.build_lm` (``cald-lm build``) reads sentences (text files,
TSV, SpeechBrain CSV manifests, SLURP jsonl), normalises them to the alphabet of a model
(the project's text normaliser, then the model's case and units), leaves out sentences
of given manifests (dev and test sets) and estimates a modified Kneser-Ney model with
KenLM's ``lmplz``. The package imports data (text, tokenizers) and the decoders'
alphabet (:mod:`cald_speech.decoding`), never training code.
"""

from cald_speech.lm.build import build_lm, find_tool, read_sentences

__all__ = ["build_lm", "find_tool", "read_sentences"]
