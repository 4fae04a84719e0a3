"""Distillation: losses, guidance (which teacher, when) and the Brain every task shares.

``losses`` (layer alignment, logit KD, DistilHuBERT), ``guidance``, ``brain``
(:class:`~cald_speech.distill.brain.DistillBrain`) with ``stages`` (what a stage logs and
ranks), ``optim`` (weight-decay groups, clipping), ``faults`` (bad items, skipped steps),
``checkpoints`` (atomic checkpoints, generator state). May import student, features,
mixers, errors; never tasks, inference or bench.
"""

from cald_speech.distill.losses import (
    distilhubert_loss,
    logit_kd_loss,
    masked_layer_loss,
    parameter_free_layer_norm,
)

__all__ = [
    "distilhubert_loss",
    "logit_kd_loss",
    "masked_layer_loss",
    "parameter_free_layer_norm",
]
