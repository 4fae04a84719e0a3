"""The layer-distillation Brain: a student learns to yield a frozen teacher's layers.

:class:`LayerDistillBrain` is :class:`~cald_speech.distill.brain.DistillBrain` whose task
is the teacher itself: the teacher (frozen, eval mode, no gradients, outside
``self.modules``) gives the target layers of every batch; the student predicts them
(teacher forcing in training, true generation on valid and test) and the loss is
DistilHuBERT's L1 − λ·log σ(cos) per layer, padding masked, averaged over layers.
Bad items, skipped steps, checkpoints and resumption are the core's.
"""

import speechbrain as sb
import torch

from cald_speech.distill.brain import DistillBrain, unwrap
from cald_speech.distill.losses import distilhubert_loss
from cald_speech.distill.stages import stage_file, write_stats_json
from cald_speech.errors import ConfigError
from cald_speech.features import cnn_fingerprint, enable_feature_input, freeze_feature_encoder
from cald_speech.gendistiller import upstream_layers


class LayerDistillBrain(DistillBrain):
    """Layer distillation of ``teacher`` into a :class:`~cald_speech.gendistiller.LayerStudent`.

    Extra hparams: ``cos_weight`` (λ), ``metrics_file`` pattern (``{split}`` filled in)
    and ``best_metric`` (``loss``, ``L1`` or ``cos``).

    Arguments
    ---------
    modules : dict
        ``{"model": LayerStudent}``.
    hparams : dict
        As for :class:`DistillBrain` (no guidance).
    teacher : transformers.PreTrainedModel
        The frozen teacher whose layers are the targets; its CNN must be the student's.
    **kwargs
        Passed to :class:`DistillBrain`.
    """

    TASK_DEFAULTS = {"best_metric": "loss", "cos_weight": 1.0, "metrics_file": None}

    def __init__(self, modules=None, hparams=None, teacher=None, **kwargs):
        if teacher is None:
            raise ConfigError("layer distillation needs the teacher model")
        super().__init__(modules=modules, hparams=hparams, teacher=None, **kwargs)
        if self.hparams.best_metric not in ("loss", "L1", "cos"):
            raise ConfigError(f"best_metric '{self.hparams.best_metric}' is not one of "
                              "['loss', 'L1', 'cos']")
        student = unwrap(self.modules.model)
        if cnn_fingerprint(teacher) != cnn_fingerprint(student):
            raise ConfigError("the student's CNN is not the teacher's: distil from the "
                              "teacher the student was built from")
        teacher = teacher.to(self.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        enable_feature_input(teacher)
        freeze_feature_encoder(teacher)
        self.layer_teacher = teacher
        self._sums = {}

    def run_model(self, model, input_values, attention_mask, hidden_states):
        """The student's layers and the teacher's, as ``(None, {"pred", "target"})``."""
        layers = unwrap(model).target_layers
        with torch.no_grad():
            targets, _ = upstream_layers(self.layer_teacher, input_values, attention_mask,
                                         layers)
        forcing = targets if model.training else None  # valid/test: true generation
        out = model(input_values, attention_mask=attention_mask, targets=forcing)
        return None, {"pred": out.layers, "target": targets}

    def head_module(self, model):
        """The generator (or the parallel heads)."""
        return unwrap(model).head

    def task_loss(self, logits, frame_mask, batch, stage):
        """L1 − λ·log σ(cos) per target layer over valid frames, averaged over layers."""
        loss, parts = distilhubert_loss(logits["pred"], logits["target"], frame_mask,
                                        self.hparams.cos_weight)
        if stage != sb.Stage.TRAIN:
            frames = float(frame_mask.sum())
            for i, layer in enumerate(unwrap(self.modules.model).target_layers):
                for name in ("l1", "cos"):
                    key = (name, layer)
                    s, n = self._sums.get(key, (0.0, 0.0))
                    self._sums[key] = (s + parts[name][i] * frames, n + frames)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Fresh per-layer sums for valid/test."""
        super().on_stage_start(stage, epoch)
        self._sums = {}

    def stage_metrics(self):
        """Per target layer and on average: L1 and cosine similarity over valid frames."""
        stats = {}
        for (name, layer), (s, n) in sorted(self._sums.items()):
            stats[f"{'L1' if name == 'l1' else 'cos'}_layer{layer}"] = s / max(n, 1.0)
        for name in ("L1", "cos"):
            values = [v for k, v in stats.items() if k.startswith(name + "_")]
            if values:
                stats[name] = sum(values) / len(values)
        return stats

    def best_metric(self):
        """``loss`` and ``L1`` are minimised, ``cos`` maximised."""
        key = self.hparams.best_metric
        return key, "max" if key == "cos" else "min"

    def write_stage_files(self, split, stats):
        """``metrics_file`` (JSON of the split's statistics)."""
        pattern = self.hparams.metrics_file
        if not pattern:
            return
        write_stats_json(stage_file(pattern, split), stats)
