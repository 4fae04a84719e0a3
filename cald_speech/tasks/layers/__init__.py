"""Task-agnostic layer distillation (GenDistiller, DistilHuBERT) on unlabelled audio.

``brain`` (:class:`LayerDistillBrain`: the frozen teacher's target layers, teacher
forcing in training, generation on valid/test, L1 − λ·log σ(cos) per layer) and
``recipe`` (the Task behind ``recipes/LibriSpeech/distill/train.py``).
"""
