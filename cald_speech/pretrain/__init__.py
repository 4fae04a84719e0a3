"""The offline starting model's CTC training (``python -m cald_speech.pretrain``).

``data``: the corpus held in memory, length-bucketed batches, waveform augmentation and
the :class:`~cald_speech.pretrain.data.FeatureBank` (a frozen CNN run once per utterance
and augmentation variant); ``train``: model building, the training loop, evaluation and
the command line. Used by ``tools/make_pretrained.sh`` (stage ``fast``). May import data,
features, families, student files, cli and errors; never tasks, inference or bench.
"""

from cald_speech.pretrain.data import (
    Corpus,
    FeatureBank,
    add_noise,
    length_batches,
    speed_perturb,
)
from cald_speech.pretrain.train import build_model, build_parser, evaluate, lr_factor, main, train

__all__ = ["Corpus", "FeatureBank", "add_noise", "build_model", "build_parser", "evaluate",
           "length_batches", "lr_factor", "main", "speed_perturb", "train"]
