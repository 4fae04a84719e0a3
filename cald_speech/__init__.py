"""cald-speech: linear-time students of transformer speech encoders, trained with CALD.

Packages, arrows pointing down only: ``tasks`` (recipes: ASR, intents, layer
distillation, probes) -> ``distill`` (losses, guidance, the shared Brain),
``gendistiller`` (GenDistiller and DistilHuBERT layer students) and ``student``
(conversion, model, files) -> ``mixers`` (linear-time token mixers and their kernels).
Beside them: ``data`` (corpora, manifests, audio; knows no models), ``inference``
(transcription and classification; no training code), ``bench`` (benchmarks), ``demo``
(the ``make demo`` pipeline). Shared
leaves: ``errors``, ``cli`` (console-script conventions), ``families``, ``features``
(frozen-CNN features); ``frontend`` and ``pretrain`` build the offline starting model.
"""

__version__ = "0.1.0"
