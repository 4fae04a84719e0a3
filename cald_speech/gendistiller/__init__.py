"""Generative layer distillation (GenDistiller) and its DistilHuBERT baseline: the models.

``generators`` (the two-dimensional-attention and linear-time layer generators, the
parallel prediction heads) and ``model`` (:class:`LayerStudent`: a teacher cut down to
a few layers plus a head that yields the teacher's target layers; building, saving,
loading; an upstream's layers for probing). Training lives in ``cald_speech.tasks.layers``
(the distill recipe) and ``cald_speech.tasks.probe`` (the CTC probe recipe).

May import: student, mixers, features, families, errors — never tasks, distill,
inference, bench or data.
"""

from cald_speech.gendistiller.generators import (
    GeneratorBlock,
    LayerCausalAttention,
    LayerGenerator,
    ParallelHeads,
)
from cald_speech.gendistiller.model import (
    ARCHITECTURES,
    LayerOutput,
    LayerStudent,
    build_layer_student,
    check_target_layers,
    default_target_layers,
    is_layer_student,
    load_upstream,
    truncated_encoder,
    upstream_layers,
)

__all__ = [
    "ARCHITECTURES",
    "GeneratorBlock",
    "LayerCausalAttention",
    "LayerGenerator",
    "LayerOutput",
    "LayerStudent",
    "ParallelHeads",
    "build_layer_student",
    "check_target_layers",
    "default_target_layers",
    "is_layer_student",
    "load_upstream",
    "truncated_encoder",
    "upstream_layers",
]
