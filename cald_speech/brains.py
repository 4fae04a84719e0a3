"""SpeechBrain Brains: one distillation core shared by the CTC and intent tasks.

:class:`DistillBrain` fine-tunes a model (a converted student, or a transformer when
training a teacher) for a task and, according to a :class:`~cald_speech.distill.guidance.
Guidance`, distils a transformer teacher into it layer by layer (CALD):

    loss = task + α_layer · w_layer(step) · layer_alignment + α_logit · w_logit(step) · KD

The teacher never lives in ``self.modules`` (SpeechBrain would put it back in train
mode every epoch): it is held by the Brain, kept in eval mode and run without
gradients — except in trajectory guidance, where it is fine-tuned alongside the
student by its own optimiser (its parameters and optimiser state are checkpointed).

Subclasses supply the task: :class:`CTCBrain` here, the intent Brain in
:mod:`cald_speech.intent`.

Batches carry ``id``, ``sig`` (padded waveforms with relative lengths) and ``ok``
(False for items whose audio could not be read: they are masked out of every loss
and counted).
"""

import json
import logging
import os
import time

import speechbrain as sb
import torch
import torch.nn.functional as F

from cald_speech.distill.guidance import Guidance
from cald_speech.distill.losses import logit_kd_loss, masked_layer_loss
from cald_speech.errors import ConfigError
from cald_speech.features import (
    base_model,
    enable_feature_input,
    frame_lengths,
    freeze_feature_encoder,
)

logger = logging.getLogger(__name__)

#: Hyperparameters the distillation core reads, with their defaults.
DISTILL_DEFAULTS = {
    "alpha_layer": 15.0,
    "alpha_logit": 1.0,
    "kd_temperature": 2.0,
    "layer_indices": None,
    "layer_weights": None,
    "feature_cache": None,
    "train_feature_encoder": False,
    "log_every": 10,
    "waypoint_every": None,
    "waypoint_dir": None,
    "teacher_loader": None,
    "encoder_lr_schedule": None,
    "head_lr_schedule": None,
    "teacher_lr_schedule": None,
    "teacher_opt_class": None,
}


def unwrap(module):
    """The module inside a DDP/DP wrapper (or the module itself)."""
    return getattr(module, "module", module)


def average_gradients(params):
    """Averages the gradients of ``params`` over the processes of a DDP run, in place.

    For modules that DDP does not wrap (the co-trained teacher of trajectory
    guidance), so that every process applies the same update. A parameter without a
    gradient in one process counts as zero there (LayerDrop may skip different layers
    in different processes). Does nothing outside a process group.

    Example
    -------
    >>> p = torch.nn.Parameter(torch.ones(2))
    >>> p.grad = torch.full((2,), 3.0)
    >>> average_gradients([p])  # a single process: unchanged
    >>> p.grad
    tensor([3., 3.])
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


#: Checkpoint meta key holding :meth:`DistillBrain.checkpoint_rank`.
RANK_KEY = "rank"


class DistillBrain(sb.Brain):
    """Task fine-tuning with optional layerwise distillation from a teacher.

    Arguments
    ---------
    modules : dict
        Must hold ``model``: a HF wav2vec2/HuBERT/WavLM model or converted student.
    hparams : dict
        ``guidance`` (a Guidance, or None = no teacher), ``encoder_opt_class``,
        ``head_opt_class`` and the keys of :data:`DISTILL_DEFAULTS`.
    teacher : torch.nn.Module, optional
        The transformer teacher (not for ``unguided``; for ``waypoint`` the Brain
        loads teachers itself with ``hparams["teacher_loader"]``).
    **kwargs
        Passed to :class:`speechbrain.Brain`.
    """

    def __init__(self, modules=None, hparams=None, teacher=None, **kwargs):
        hparams = dict(hparams or {})
        for k, v in DISTILL_DEFAULTS.items():
            hparams.setdefault(k, v)
        guidance = hparams.get("guidance")
        if guidance is not None and not isinstance(guidance, Guidance):
            raise ConfigError(f"hparams['guidance'] must be a Guidance, got {guidance!r}")
        if modules is None or "model" not in modules:
            raise ConfigError("DistillBrain needs modules={'model': <speech model>}")
        super().__init__(modules=modules, hparams=hparams, **kwargs)
        self.guidance = guidance
        self.teacher = None
        self._waypoint_index = None
        if guidance is not None and guidance.mode == "waypoint":
            if hparams["teacher_loader"] is None:
                raise ConfigError("waypoint guidance needs hparams['teacher_loader']")
        elif guidance is not None and guidance.mode != "unguided":
            if teacher is None:
                raise ConfigError(f"guidance '{guidance.mode}' needs a teacher model")
            self._set_teacher(teacher, trainable=guidance.mode == "trajectory")
        self.bad_items = 0
        self._terms = {}
        config = getattr(unwrap(self.modules.model), "config", None)
        if guidance is not None and guidance.mode != "unguided" and config is not None:
            if getattr(config, "layerdrop", 0.0):
                # A dropped layer has no hidden state to align with the teacher's.
                logger.info("layer alignment: LayerDrop %.2f -> 0", config.layerdrop)
                config.layerdrop = 0.0
        if self.distributed_launch and getattr(config, "layerdrop", 0.0):
            # Each process drops its own layers: DDP must expect unused parameters, or
            # the gradient all-reduce waits forever.
            if not self.find_unused_parameters:
                logger.info("LayerDrop %.2f under DDP: find_unused_parameters on",
                            config.layerdrop)
            self.find_unused_parameters = True
        enable_feature_input(unwrap(self.modules.model))
        if self.hparams.train_feature_encoder:
            # Training from scratch: the CNN learns too, so its output cannot be cached.
            if self.hparams.feature_cache is not None:
                raise ConfigError(
                    "train_feature_encoder: true needs cache_features: false "
                    "(cached CNN features would go stale as the CNN trains)"
                )
        else:
            freeze_feature_encoder(unwrap(self.modules.model))

    # ------------------------------------------------------------------ teacher
    def _set_teacher(self, teacher, trainable=False):
        teacher = teacher.to(self.device)
        enable_feature_input(teacher)
        freeze_feature_encoder(teacher)
        for p in teacher.parameters():
            p.requires_grad_(False)
        if trainable:
            fe = base_model(teacher).feature_extractor
            frozen = {id(p) for p in fe.parameters()}
            for p in teacher.parameters():
                if id(p) not in frozen:
                    p.requires_grad_(True)
        teacher.eval()
        self.teacher = teacher

    def _ensure_waypoint_teacher(self):
        idx = self.guidance.waypoint_index(self.optimizer_step)
        if idx != self._waypoint_index:
            step, path = self.guidance.waypoints[idx]
            logger.info(
                "waypoint guidance: teacher = %s (waypoint step %d) from update %d",
                path, step, self.optimizer_step,
            )
            self._set_teacher(self.hparams.teacher_loader(path))
            self._waypoint_index = idx

    # ------------------------------------------------------------------ inputs
    def model_inputs(self, batch, model):
        """``input_values`` (features when cached) and the sample-level attention mask."""
        wavs, rel = batch.sig
        wavs = wavs.to(self.device)
        n = (rel * wavs.shape[1]).round().long()
        cache = self.hparams.feature_cache
        if cache is not None:
            singles = [w[:k].cpu() for w, k in zip(wavs, n)]
            feats, mask = cache.batch(unwrap(model), batch.id, singles)
            return feats.to(self.device), mask.to(self.device)
        mask = (torch.arange(wavs.shape[1], device=self.device)[None] < n[:, None]).long()
        return wavs, mask

    def teacher_inputs(self, batch, inputs, amask):
        """The student's inputs when both share a CNN (or take waveforms); else the teacher's."""
        cache = self.hparams.feature_cache
        if cache is None or cache.fingerprint(self.teacher) == cache.fingerprint(
            unwrap(self.modules.model)
        ):
            return inputs, amask
        return self.model_inputs(batch, self.teacher)

    def frame_mask(self, model, attention_mask, batch):
        """(B, T') bool mask of valid frames; items whose audio failed are all False.

        T' is the encoder's frame count for the padded input (``attention_mask`` is
        sample-level, also when the input is cached CNN features).
        """
        num_frames = int(frame_lengths(unwrap(model), attention_mask.shape[1]))
        mask = base_model(unwrap(model))._get_feature_vector_attention_mask(
            num_frames, attention_mask
        )
        ok = getattr(batch, "ok", None)
        if ok is not None:
            mask = mask & torch.as_tensor(ok, device=mask.device).bool()[:, None]
        return mask

    # ------------------------------------------------------------ task hooks
    def run_model(self, model, input_values, attention_mask, hidden_states):
        """Runs a model; returns (hidden states or None, task logits)."""
        raise NotImplementedError

    def head_module(self, model):
        """The task head of ``model`` (gets its own optimiser)."""
        raise NotImplementedError

    def task_loss(self, logits, frame_mask, batch, stage):
        """The task loss (and metric bookkeeping on valid/test stages)."""
        raise NotImplementedError

    def kd_loss(self, student_logits, teacher_logits, frame_mask):
        """Logit distillation at temperature τ over valid frames."""
        return logit_kd_loss(
            student_logits, teacher_logits, frame_mask, self.hparams.kd_temperature
        )

    # ------------------------------------------------------------ forward
    def compute_forward(self, batch, stage):
        """Runs the model and, when the guidance needs it at this step, the teacher."""
        batch = batch.to(self.device)
        model = self.modules.model
        step = self.optimizer_step
        g = self.guidance
        use_teacher = stage == sb.Stage.TRAIN and g is not None and g.uses_teacher(step)
        need_hid = use_teacher and g.layer_weight(step) > 0
        inputs, amask = self.model_inputs(batch, model)
        hid, logits = self.run_model(model, inputs, amask, need_hid)
        out = {"hid": hid, "logits": logits, "inputs": inputs, "amask": amask}
        out["mask"] = self.frame_mask(model, amask, batch)
        if use_teacher:
            if g.mode == "waypoint":
                self._ensure_waypoint_teacher()
            t_inputs, t_amask = self.teacher_inputs(batch, inputs, amask)
            with torch.no_grad():
                t_hid, t_logits = self.run_model(self.teacher, t_inputs, t_amask, need_hid)
            out["t_hid"], out["t_logits"] = t_hid, t_logits
        return out

    def compute_objectives(self, predictions, batch, stage):
        """Task loss plus the distillation terms the guidance asks for at this step."""
        mask = predictions["mask"]
        bad = int((~mask.any(dim=1)).sum())
        if stage == sb.Stage.TRAIN and bad:
            self.bad_items += bad
        loss = self.task_loss(predictions["logits"], mask, batch, stage)
        terms = {"task": loss.detach()}
        if "t_logits" in predictions:
            step = self.optimizer_step
            w_layer = self.hparams.alpha_layer * self.guidance.layer_weight(step)
            w_logit = self.hparams.alpha_logit * self.guidance.logit_weight(step)
            if w_layer > 0:
                layer = masked_layer_loss(
                    predictions["hid"], predictions["t_hid"], mask,
                    self.hparams.layer_indices, self.hparams.layer_weights,
                )
                loss = loss + w_layer * layer
                terms["layer"] = layer.detach()
            if w_logit > 0:
                kd = self.kd_loss(predictions["logits"], predictions["t_logits"], mask)
                loss = loss + w_logit * kd
                terms["kd"] = kd.detach()
        terms["total"] = loss.detach()
        self._accumulate(stage, terms)
        return loss

    # ------------------------------------------------------------ training
    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """SpeechBrain's loader; a train sampler given in ``loader_kwargs`` gets its epoch.

        SpeechBrain calls ``set_epoch`` only on samplers it builds itself (or wraps for
        DDP); a sampler passed in (e.g. :func:`cald_speech.data.pipeline.epoch_sampler`
        or a dynamic batch sampler) would otherwise repeat one order every epoch.
        """
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN and self.train_sampler is None:
            sampler = loader_kwargs.get("sampler") or loader_kwargs.get("batch_sampler")
            if hasattr(sampler, "set_epoch"):
                self.train_sampler = sampler
        return loader

    def fit_batch(self, batch):
        """One student update (and, in trajectory guidance, a teacher update when due)."""
        step = self.optimizer_step
        loss = super().fit_batch(batch)
        g = self.guidance
        if g is not None and g.trains_teacher(step):
            self._teacher_update(batch)
        return loss

    def _teacher_update(self, batch):
        batch = batch.to(self.device)
        self.teacher.train()
        inputs, amask = self.model_inputs(batch, self.teacher)
        _, logits = self.run_model(self.teacher, inputs, amask, False)
        mask = self.frame_mask(self.teacher, amask, batch)
        loss = self.task_loss(logits, mask, batch, sb.Stage.TRAIN)
        self.teacher_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.teacher.parameters() if p.requires_grad]
        average_gradients(params)  # DDP: one teacher, the same in every process
        torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.teacher_optimizer.step()
        if self.hparams.teacher_lr_schedule is not None:
            self.hparams.teacher_lr_schedule(self.teacher_optimizer)
        self.teacher.eval()
        self._accumulate(sb.Stage.TRAIN, {"teacher_task": loss.detach()})

    def init_optimizers(self):
        """Two optimisers (encoder, head); a third for the trajectory teacher."""
        model = unwrap(self.modules.model)
        head = [p for p in self.head_module(model).parameters() if p.requires_grad]
        head_ids = {id(p) for p in head}
        enc = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
        self.optimizers_dict = {}
        if enc:
            self.encoder_optimizer = self.hparams.encoder_opt_class(enc)
            self.optimizers_dict["encoder"] = self.encoder_optimizer
        if head:
            self.head_optimizer = self.hparams.head_opt_class(head)
            self.optimizers_dict["head"] = self.head_optimizer
        if self.guidance is not None and self.guidance.mode == "trajectory":
            opt_class = self.hparams.teacher_opt_class or self.hparams.encoder_opt_class
            self.teacher_optimizer = opt_class(
                [p for p in self.teacher.parameters() if p.requires_grad]
            )
        if self.checkpointer is not None:
            for name, opt in self.optimizers_dict.items():
                self.checkpointer.add_recoverable(f"{name}_optimizer", opt)
            if self.guidance is not None and self.guidance.mode == "trajectory":
                self.checkpointer.add_recoverable("teacher", self.teacher)
                self.checkpointer.add_recoverable("teacher_optimizer", self.teacher_optimizer)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """LR schedules, per-step log lines and teacher waypoints."""
        if not should_step:
            return
        hp = self.hparams
        if hp.encoder_lr_schedule is not None and "encoder" in self.optimizers_dict:
            hp.encoder_lr_schedule(self.encoder_optimizer)
        if hp.head_lr_schedule is not None and "head" in self.optimizers_dict:
            hp.head_lr_schedule(self.head_optimizer)
        step = self.optimizer_step
        if hp.log_every and step % hp.log_every == 0:
            self._write_step_log(step)
        if hp.waypoint_every and step % hp.waypoint_every == 0:
            self.save_waypoint(step)

    def save_waypoint(self, step):
        """Saves the current model as waypoint ``step-<N>`` (for waypoint guidance)."""
        if self.hparams.waypoint_dir is None:
            raise ConfigError("waypoint_every is set but waypoint_dir is not")
        if not sb.utils.distributed.if_main_process():
            return
        path = os.path.join(self.hparams.waypoint_dir, f"step-{step}")
        unwrap(self.modules.model).save_pretrained(path)

    # ------------------------------------------------------------ logging
    def _accumulate(self, stage, terms):
        acc = self._terms.setdefault(stage, {})
        win = self._terms.setdefault(("window", stage), {})
        for k, v in terms.items():
            for d in (acc, win):
                s, n = d.get(k, (0.0, 0))
                d[k] = (s + float(v), n + 1)

    def stage_terms(self, stage, window=False):
        """Mean of every loss term over the stage (or the window since the last log)."""
        d = self._terms.get(("window", stage) if window else stage, {})
        return {k: s / max(n, 1) for k, (s, n) in d.items()}

    def _write_step_log(self, step):
        terms = self.stage_terms(sb.Stage.TRAIN, window=True)
        self._terms[("window", sb.Stage.TRAIN)] = {}
        if not sb.utils.distributed.if_main_process() or not terms:
            return
        lrs = {
            f"lr_{name}": opt.param_groups[0]["lr"] for name, opt in self.optimizers_dict.items()
        }
        rec = {"step": step, "time": time.time(), **terms, **lrs}
        path = getattr(self.hparams, "step_log", None)
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")

    def on_stage_start(self, stage, epoch=None):
        """Resets the per-stage loss terms."""
        self._terms.pop(stage, None)
        self._terms.pop(("window", stage), None)

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

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs every loss term and metric, keeps the best checkpoint, writes results."""
        stats = {"loss": stage_loss, **self.stage_terms(stage)}
        if stage == sb.Stage.TRAIN:
            stats["bad_items"] = self.bad_items
            self.train_stats = stats
            return
        stats.update(self.stage_metrics())
        split = getattr(self, "eval_split", None) or (
            "valid" if stage == sb.Stage.VALID else "test"
        )
        self.last_stats = stats
        log = getattr(self.hparams, "train_logger", None)
        if stage == sb.Stage.VALID:
            if log is not None:
                log.log_stats(
                    stats_meta={"epoch": epoch, "updates": self.optimizer_step},
                    train_stats=getattr(self, "train_stats", None),
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


class CTCBrain(DistillBrain):
    """CTC speech recognition (character or SentencePiece units, greedy decoding).

    The model is a HF ``*ForCTC`` model (teacher) or its converted student; its
    ``lm_head`` is the task head. Extra hparams: ``tokenizer`` (with ``decode_ctc``
    and a blank at index 0), ``wer_file`` pattern (``{split}`` filled in).
    Batches carry ``tokens`` (padded ids) and ``words`` (reference text).
    """

    def run_model(self, model, input_values, attention_mask, hidden_states):
        """Returns (hidden states or None, frame logits)."""
        out = model(
            input_values, attention_mask=attention_mask, output_hidden_states=hidden_states
        )
        return (out.hidden_states if hidden_states else None), out.logits

    def head_module(self, model):
        """The CTC output projection."""
        return model.lm_head

    def task_loss(self, logits, frame_mask, batch, stage):
        """CTC loss over valid frames, mean over the items whose audio was readable."""
        tokens, tok_rel = batch.tokens
        tok_len = (tok_rel * tokens.shape[1]).round().long()
        in_len = frame_mask.sum(dim=1)
        keep = in_len > 0
        log_probs = F.log_softmax(logits.float(), dim=-1)
        if keep.any():
            loss = F.ctc_loss(
                log_probs[keep].transpose(0, 1), tokens[keep], in_len[keep], tok_len[keep],
                blank=0, reduction="mean", zero_infinity=True,
            )
        else:
            loss = logits.sum() * 0.0
        if stage != sb.Stage.TRAIN:
            self._score(log_probs, in_len, batch)
        return loss

    def _score(self, log_probs, in_len, batch):
        tok = self.hparams.tokenizer
        best = log_probs.argmax(dim=-1).cpu()
        hyps = [tok.decode_ctc(best[i, : int(n)].tolist()).split() for i, n in enumerate(in_len)]
        refs = [w.split() for w in batch.words]
        self.wer_metric.append(batch.id, hyps, refs)
        self.cer_metric.append(batch.id, [list(" ".join(h)) for h in hyps],
                               [list(" ".join(r)) for r in refs])

    def on_stage_start(self, stage, epoch=None):
        """Fresh error-rate trackers for valid/test."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.wer_metric = sb.utils.metric_stats.ErrorRateStats()
            self.cer_metric = sb.utils.metric_stats.ErrorRateStats()

    def stage_metrics(self):
        """WER and CER of the stage."""
        return {
            "WER": self.wer_metric.summarize("error_rate"),
            "CER": self.cer_metric.summarize("error_rate"),
        }

    def best_metric(self):
        """Checkpoints are ranked by ``best_metric`` (``WER``, the default, or ``CER``)."""
        return getattr(self.hparams, "best_metric", "WER"), "min"

    def checkpoint_rank(self, stats):
        """The best metric capped at 100 %, ties broken by the other error rate.

        Above 100 % WER a model is no better than one that outputs nothing, and
        early in training every checkpoint may be there: ranking raw WER would keep
        the checkpoint that emits nothing (exactly 100 %) over one that has started
        to spell (101 % WER, far lower CER). The cap makes those a tie for CER. Where
        WER stays near 100 % (a weak model), ``best_metric: CER`` ranks by CER.

        Example
        -------
        >>> brain = CTCBrain.__new__(CTCBrain)
        >>> brain.hparams = type("H", (), {})()
        >>> rank = brain.checkpoint_rank
        >>> rank({"WER": 100.0, "CER": 60.0}) < rank({"WER": 100.0, "CER": 90.0})
        True
        >>> rank({"WER": 99.75, "CER": 99.0}) < rank({"WER": 100.0, "CER": 0.0})
        True
        >>> rank({"WER": 101.0, "CER": 77.0}) < rank({"WER": 100.0, "CER": 99.0})
        True
        >>> brain.hparams.best_metric = "CER"
        >>> rank({"WER": 100.0, "CER": 67.8}) < rank({"WER": 99.75, "CER": 71.5})
        True
        """
        best = self.best_metric()[0]
        other = "CER" if best == "WER" else "WER"
        return min(stats[best], 100.0) + 1e-4 * min(stats[other], 100.0)

    def write_stage_files(self, split, stats):
        """``wer_file`` (alignments, SpeechBrain format) and its ``.json`` summary."""
        pattern = getattr(self.hparams, "wer_file", None)
        if not pattern:
            return
        path = pattern.format(split=split)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as w:
            self.wer_metric.write_stats(w)
        with open(os.path.splitext(path)[0] + ".json", "w", encoding="utf-8") as w:
            json.dump({k: float(v) for k, v in stats.items()}, w, indent=2)
