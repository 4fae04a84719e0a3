"""Inference settings and their defaults, importable without torch.

The console scripts build their parsers from these, so that ``--help`` and usage
errors answer before any model code is imported. The modules that use them
(:mod:`~.windows`, :mod:`~.cnn_blocks`, :mod:`~.long_form`, :mod:`~.transcriber`,
:mod:`~.formats`) take them from here.

Example
-------
>>> DEFAULT_WINDOW_S, FORMATS
(30.0, ('txt', 'json', 'srt'))
"""

#: Windowed mode: seconds the model sees at once, and context on each side.
DEFAULT_WINDOW_S = 30.0
DEFAULT_OVERLAP_S = 2.0
#: Seconds of audio per CNN block in one-pass mode.
DEFAULT_CNN_BLOCK_S = 10.0
#: One-pass mode, group-norm CNN: seconds of audio whose statistics normalise each block.
DEFAULT_NORM_WINDOW_S = 30.0
#: One-pass mode: MiB of a shared-projection mixer's in_proj features kept for reuse
#: by its backward scan (see :func:`~.long_form.bimamba2_blockwise`). 512 MiB covers 10
#: minutes of wav2vec2-base-sized features (370 MB) and keeps an hour of audio within
#: 4 GiB; 2 GiB would cover the hour for about 6 % less time at 60 minutes and 1.8 GiB
#: more peak.
DEFAULT_PROJECTION_CACHE_MB = 512
#: How a transcriber reads an input (see :class:`~.transcriber.Transcriber`).
MODES = ("auto", "one-pass", "windowed", "plain")
#: Output formats of a transcript.
FORMATS = ("txt", "json", "srt")
#: Precisions of the matrix products (:data:`~.precision.PRECISIONS`, kept equal by a test).
PRECISIONS = ("fp32", "bf16")
