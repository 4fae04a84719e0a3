"""What a distillation Brain records per stage: loss terms, step logs, metrics, results.

:class:`StageRecords` is the part of :class:`cald_speech.distill.brain.DistillBrain` that
averages every loss term over a stage (and over the window between two step-log lines),
logs the stage, keeps the best checkpoint ranked by the task's metric and writes the
task's per-split result files. A task Brain supplies :meth:`~StageRecords.stage_metrics`,
:meth:`~StageRecords.best_metric` and :meth:`~StageRecords.write_stage_files`.
"""

import functools
import json
import os
import time

import speechbrain as sb
import torch

from cald_speech.distill.faults import reduce_sum
from cald_speech.distill.optim import rank_mean

#: Checkpoint meta key holding :meth:`StageRecords.checkpoint_rank`.
RANK_KEY = "rank"


def stage_file(pattern, split):
    """The result file of ``split``: ``pattern`` with ``{split}`` filled in, folder made.

    Example
    -------
    >>> import tempfile
    >>> stage_file(os.path.join(tempfile.mkdtemp(), "out", "wer_{split}.txt"), "test")[-12:]
    'wer_test.txt'
    """
    path = pattern.format(split=split)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def write_stats_json(path, stats):
    """Writes a stage's statistics as JSON (numbers as floats)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({k: float(v) for k, v in stats.items()}, f, indent=2)


class StageRecords:
    """Stage bookkeeping of a distillation Brain (a mixin of :class:`speechbrain.Brain`).

    Loss terms are summed on the device where they were computed; they are read back
    (and averaged over the processes of a distributed run) only when a step-log line is
    written or a stage ends, so that a training step never waits for the device to
    report its numbers.
    """

    resume_stage = None  # training-stage sums restored from a checkpoint, until it starts
    _loss_sum = None     # (sum, count) of this stage's finite training losses, on device
    _loss_shown = 0.0    # their mean as of the last step-log line (the progress bar's)
    _stage_now = None

    def _accumulate(self, stage, terms, keep=None):
        """Adds a batch's loss terms (tensors or numbers) to the stage's and the window's
        sums; ``keep`` (a bool tensor) False leaves them out without reading it."""
        acc = self._terms.setdefault(stage, {})
        win = self._terms.setdefault(("window", stage), {})
        for k, v in terms.items():
            v = torch.as_tensor(v).detach().to(torch.float64)
            n = torch.ones((), dtype=torch.float64, device=v.device)  # a fill: no copy
            if keep is not None:
                keep_here = keep.to(v.device)
                v, n = torch.where(keep_here, v, 0.0), keep_here.to(torch.float64)
            for d in (acc, win):
                s, c = d.get(k, (0.0, 0.0))
                d[k] = (v + s, n + c)

    def stage_terms(self, stage, window=False):
        """Mean of every loss term over the stage (or the window since the last log).

        In a distributed training stage, the mean over the batches of every process.
        """
        d = self._terms.get(("window", stage) if window else stage, {})
        keys = sorted(d)
        if not keys:
            return {}
        device = d[keys[0]][0].device
        flat = torch.stack([d[k][i].to(device) for i in (0, 1) for k in keys])
        flat = reduce_sum(flat) if stage == sb.Stage.TRAIN else flat.tolist()
        sums, counts = flat[: len(keys)], flat[len(keys):]
        return {k: s / max(c, 1.0) for k, s, c in zip(keys, sums, counts)}

    def update_average(self, loss, avg_loss):
        """SpeechBrain's running mean of the training loss, kept on the device (other
        stages: SpeechBrain's own).

        Returns, for the progress bar, the mean loss of the window before the last
        step-log line (a float known without waiting); the stage's exact mean is read
        at its end and when a checkpoint is saved. Non-finite losses are left out, as
        SpeechBrain does. A run resumed mid-epoch starts from the mean its checkpoint
        holds.
        """
        if self._stage_now != sb.Stage.TRAIN:
            return super().update_average(loss, avg_loss)
        loss = torch.as_tensor(loss).detach()
        if self._loss_sum is None:
            done = float(max(self.step - 1, 0))
            self._loss_sum = (torch.full((), float(avg_loss) * done, dtype=torch.float64,
                                         device=loss.device),
                              torch.full((), done, dtype=torch.float64, device=loss.device))
        total, count = self._loss_sum
        keep = torch.isfinite(loss).to(total.device)
        loss = loss.to(total.device)
        total += torch.where(keep, loss.double(), 0.0)
        count += keep
        return self._loss_shown

    def train_loss_mean(self, reset=False):
        """The mean of this stage's finite training losses so far (reads the device)."""
        if self._loss_sum is None:
            return self._loss_shown
        total, count = torch.stack(self._loss_sum).tolist()
        if reset:
            self._loss_sum = None
        self._loss_shown = total / count if count else float("nan")
        return self._loss_shown

    def _save_intra_epoch_ckpt(self):
        self.avg_train_loss = self.train_loss_mean()  # what the checkpoint resumes from
        super()._save_intra_epoch_ckpt()

    def _write_step_log(self, step):
        terms = self.stage_terms(sb.Stage.TRAIN, window=True)
        self._terms[("window", sb.Stage.TRAIN)] = {}
        self._loss_shown = terms.get("total", self._loss_shown)
        if not sb.utils.distributed.if_main_process() or not terms:
            return
        lrs = {
            f"lr_{name}": opt.param_groups[0]["lr"] for name, opt in self.optimizers_dict.items()
        }
        rec = {"step": step, "time": time.time(), **terms, **lrs}
        path = self.hparams.step_log
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")

    def train_stage_state(self):
        """This process's training-stage sums and the fault counts (for a checkpoint)."""
        terms = {k: (float(s), float(c))
                 for k, (s, c) in self._terms.get(sb.Stage.TRAIN, {}).items()}
        f = self.faults
        return {"terms": terms, "items": f.items, "bad_items": f.bad_items,
                "bad_items_total": f.bad_items_total, "nonfinite_total": f.nonfinite_total,
                "nonfinite_run": f.nonfinite_run}

    def on_stage_start(self, stage, epoch=None):
        """Resets the per-stage loss terms (and, for training, the bad-item count); a
        training stage resumed from a checkpoint starts from the sums it holds."""
        self._stage_now = stage
        if stage == sb.Stage.TRAIN:
            self.faults.start_epoch(epoch)
            self._loss_sum = None
            self._nonfinite = None  # of a step the last epoch left unfinished
        self._terms.pop(stage, None)
        self._terms.pop(("window", stage), None)
        if stage == sb.Stage.TRAIN and self.resume_stage is not None:
            state, self.resume_stage = self.resume_stage, None
            f = self.faults
            for key in ("items", "bad_items", "bad_items_total", "nonfinite_total",
                        "nonfinite_run"):
                setattr(f, key, int(state[key]))
            as_t = functools.partial(torch.tensor, dtype=torch.float64, device=self.device)
            self._terms[stage] = {k: (as_t(s), as_t(c)) for k, (s, c) in state["terms"].items()}

    def stage_metrics(self):
        """The task's metrics of a finished valid/test stage (dict)."""
        return {}

    def best_metric(self):
        """(metric name, ``"min"`` or ``"max"``) that ranks checkpoints."""
        raise NotImplementedError

    def checkpoint_rank(self, stats):
        """The value checkpoints are ranked by (kept under ``RANK_KEY`` in their meta).

        By default the best metric itself; a task may break its ties.
        """
        return stats[self.best_metric()[0]]

    def write_stage_files(self, split, stats):
        """Writes the task's per-split result files (main process only)."""

    def evaluate_split(self, split, dataset, **kwargs):
        """Evaluates ``dataset`` as the test split ``split``; returns its statistics.

        The split names the result files (``wer_file``/``metrics_file`` patterns) and
        the log lines; ``kwargs`` go to :meth:`speechbrain.Brain.evaluate`.
        """
        self._eval_split = split
        try:
            self.evaluate(dataset, **kwargs)
        finally:
            self._eval_split = None
        return dict(self.last_stats)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs every loss term and metric, keeps the best checkpoint, writes results."""
        if stage == sb.Stage.TRAIN:
            stage_loss = self.train_loss_mean(reset=True)
        stats = {**rank_mean({"loss": stage_loss}), **self.stage_terms(stage)}
        if stage == sb.Stage.TRAIN:
            self.faults.flush()  # every process together: the same counts, the same stop
            stats["bad_items"] = self.faults.bad_items
            stats["skipped_steps"] = self.faults.nonfinite_total
            self.train_stats = stats
            return
        stats.update(self.stage_metrics())
        split = self._eval_split or ("valid" if stage == sb.Stage.VALID else "test")
        self.last_stats = stats
        log = self.hparams.train_logger
        if stage == sb.Stage.VALID:
            if log is not None:
                log.log_stats(
                    stats_meta={"epoch": epoch, "updates": self.optimizer_step},
                    train_stats=self.train_stats,
                    valid_stats=stats,
                )
            if self.checkpointer is not None:
                key, direction = self.best_metric()
                self.checkpointer.save_and_keep_only(
                    meta={key: stats[key], RANK_KEY: self.checkpoint_rank(stats),
                          "updates": self.optimizer_step},
                    **{f"{direction}_keys": [RANK_KEY]},
                )
        elif log is not None:
            log.log_stats(
                stats_meta={"split": split, "updates": self.optimizer_step}, test_stats=stats
            )
        if sb.utils.distributed.if_main_process():
            self.write_stage_files(split, stats)
