"""Data: corpus synthesis, preparation, manifests, audio, text and tokenisation.

``synth/`` (the offline corpus synthesizer), ``voices``, ``librispeech`` / ``slurp``
(preparation), ``manifest`` (the one manifest reader and writer), ``prep_state``
(skip counts, summaries, up-to-date checks, the split loop both corpora share),
``merge``, ``pack`` (Opus shards), ``pipeline`` (manifest -> SpeechBrain datasets),
``audio`` (the one audio reader), ``text``, ``tokenizer``, ``metrics`` (the one WER/CER
engine), ``prepare`` (``cald-prepare``). Knows no models: imports only data modules,
errors and cli.
"""
