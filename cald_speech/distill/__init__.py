"""Distillation losses, guidance schedules (which teacher, when) and GenDistiller."""

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
