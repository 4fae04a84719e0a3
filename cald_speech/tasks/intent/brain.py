"""The intent task on the shared distillation core.

:class:`IntentBrain` is :class:`~cald_speech.distill.brain.DistillBrain` with a
cross-entropy task loss, so every guidance mode of CALD works as for CTC. References
whose label train never had are left out of the loss and always count as errors.
"""

import logging

import speechbrain as sb
import torch
import torch.nn.functional as F

from cald_speech.distill.brain import DistillBrain, unwrap
from cald_speech.distill.losses import logit_kd_loss
from cald_speech.tasks.intent.labels import LABEL_COLUMNS
from cald_speech.tasks.intent.metrics import IntentMetrics

logger = logging.getLogger(__name__)


def classification_loss(parts, targets, valid):
    """Cross-entropy averaged over the tasks; unknown targets (-1) are left out.

    Arguments
    ---------
    parts : dict
        ``{task: (B, labels) logits}``.
    targets : dict
        ``{task: (B,) label indices}``, -1 for labels train never had.
    valid : torch.Tensor
        (B,) bool, False for items to leave out (unreadable audio).

    Example
    -------
    >>> parts = {"intent": torch.tensor([[0., 0.], [9., -9.]])}
    >>> loss = classification_loss(parts, {"intent": torch.tensor([0, -1])},
    ...                            torch.tensor([True, True]))
    >>> round(float(loss), 4)  # only the first item counts: log 2
    0.6931
    """
    losses = []
    for task, logits in parts.items():
        target = targets[task].to(logits.device)
        keep = valid & (target >= 0)
        if keep.any():
            losses.append(F.cross_entropy(logits[keep].float(), target[keep]))
    if not losses:
        return sum(p.sum() for p in parts.values()) * 0.0
    return torch.stack(losses).mean()


class IntentBrain(DistillBrain):
    """Intent classification (one head, or scenario + action) with CALD distillation.

    The model is an :class:`IntentModel`; its ``head`` is the task head. Extra hparams:
    ``best_metric`` (``sa_acc`` or ``intent_acc``: the checkpoint kept),
    ``metrics_file`` pattern (``{split}`` filled in), ``confusion_top``.
    Batches carry ``label_ids`` ((B, 3): intent, scenario, action; -1 = unknown) and
    the reference strings ``intent``, ``scenario``, ``action``.
    """

    TASK_DEFAULTS = {"best_metric": "sa_acc", "metrics_file": None, "confusion_top": 10}

    def run_model(self, model, input_values, attention_mask, hidden_states):
        """Returns (hidden states or None, concatenated task logits)."""
        out = model(
            input_values, attention_mask=attention_mask, output_hidden_states=hidden_states
        )
        return (out.hidden_states if hidden_states else None), out.logits

    def head_module(self, model):
        """The intent head (pooling and classifiers)."""
        return unwrap(model).head

    def _layout(self):
        return unwrap(self.modules.model)

    def task_loss(self, logits, frame_mask, batch, stage):
        """Cross-entropy per task (mean over tasks) over readable items with known labels."""
        model = self._layout()
        parts = model.split_logits(logits)
        ids = batch.label_ids.data
        targets = {t: ids[:, LABEL_COLUMNS.index(t)] for t in parts}
        ok = frame_mask.any(dim=1)
        loss = classification_loss(parts, targets, ok)
        if stage != sb.Stage.TRAIN:
            hyps = model.predict(logits.detach())
            hyps = [h if bool(k) else None for h, k in zip(hyps, ok.tolist())]
            refs = [dict(zip(LABEL_COLUMNS, x))
                    for x in zip(batch.intent, batch.scenario, batch.action)]
            self.metrics.append(batch.id, refs, hyps)
        return loss

    def kd_loss(self, student_logits, teacher_logits, frame_mask):
        """KL at temperature τ per task (mean over tasks), over readable items."""
        model = self._layout()
        ok = frame_mask.any(dim=1)[:, None]
        s, t = model.split_logits(student_logits), model.split_logits(teacher_logits)
        tau = self.hparams.kd_temperature
        terms = [logit_kd_loss(s[k][:, None], t[k][:, None], ok, tau) for k in s]
        return torch.stack(terms).mean()

    def on_stage_start(self, stage, epoch=None):
        """Fresh metrics for valid/test."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.metrics = IntentMetrics(self._layout().labels)

    def stage_metrics(self):
        """Intent, scenario and action accuracy, their mean, and the counts."""
        return self.metrics.summarize()

    def best_metric(self):
        """Checkpoints are ranked by ``best_metric`` (default ``sa_acc``), highest first."""
        return self.hparams.best_metric, "max"

    def write_stage_files(self, split, stats):
        """``metrics_file`` (summary and per-item lines), its JSON and the confusions."""
        pattern = self.hparams.metrics_file
        if not pattern:
            return
        metric_keys = self.stage_metrics()
        extra = {k: v for k, v in stats.items() if k not in metric_keys}
        self.metrics.write(pattern.format(split=split), split, extra,
                           top=self.hparams.confusion_top)
