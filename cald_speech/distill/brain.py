"""SpeechBrain Brains: one distillation core shared by the CTC and intent tasks.

:class:`DistillBrain` fine-tunes a model (a converted student, or a transformer when
training a teacher) for a task and, according to a :class:`~cald_speech.distill.guidance.
Guidance`, distils a transformer teacher into it layer by layer (CALD):

    loss = task + α_layer · w_layer(step) · layer_alignment + α_logit · w_logit(step) · KD

The teacher never lives in ``self.modules`` (SpeechBrain would put it back in train
mode every epoch): it is held by the Brain, kept in eval mode and run without
gradients — except in trajectory guidance, where it is fine-tuned alongside the
student by its own optimiser (its parameters and optimiser state are checkpointed).

Subclasses supply the task: :class:`cald_speech.tasks.asr.brain.CTCBrain` and
:class:`cald_speech.tasks.intent.brain.IntentBrain`. What a stage logs, ranks and writes
lives in :class:`cald_speech.distill.stages.StageRecords`.

Batches carry ``id``, ``sig`` (padded waveforms with relative lengths) and ``ok``
(False for items whose audio could not be read: they are masked out of every loss
and counted).
"""

import contextlib
import logging
import os

import speechbrain as sb
import torch

from cald_speech.data.audio import SAMPLE_RATE, resample
from cald_speech.distill.checkpoints import RandomState, TrainStageState
from cald_speech.distill.faults import FaultGuard, nonfinite
from cald_speech.distill.guidance import Guidance
from cald_speech.distill.losses import logit_kd_loss, masked_layer_loss
from cald_speech.distill.optim import (
    average_gradients,
    ddp_find_unused_parameters,
    make_optimizer,
    optimizer_params,
    stochastic_in_training,
)
from cald_speech.distill.stages import RANK_KEY, StageRecords
from cald_speech.errors import ConfigError
from cald_speech.features import (
    base_model,
    enable_feature_input,
    frame_lengths,
    freeze_feature_encoder,
    record_time_masks,
    spec_augment_disabled,
    time_mask,
    waveform_settings,
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
    "spec_augment_layer_loss": "all_frames",
    "teacher_encoder_opt_class": None,
    "teacher_head_opt_class": None,
    "teacher_encoder_lr_schedule": None,
    "teacher_head_lr_schedule": None,
    "max_bad_fraction": 0.05,
    "max_nonfinite_steps": 5,
    "bad_items_file": None,
    "step_log": None,
    "train_logger": None,
}

#: What the student's SpecAugment time masking does while the layer loss is on (the
#: teacher always sees clean input): ``all_frames`` (masked frames are aligned too: the
#: student infers the teacher's clean states there), ``unmasked_frames`` (masked frames
#: left out of the layer loss) or ``off`` (no masking while the layer loss is on).
SPEC_AUGMENT_LAYER_LOSS = ("all_frames", "unmasked_frames", "off")

#: Keys of older configs and what replaced them.
RENAMED = {
    "teacher_opt_class": "teacher_encoder_opt_class and teacher_head_opt_class",
    "teacher_lr_schedule": "teacher_encoder_lr_schedule and teacher_head_lr_schedule",
}

def unwrap(module):
    """The module inside a DDP/DP wrapper (or the module itself)."""
    return getattr(module, "module", module)




def _schedule_position(schedule):
    """Updates a SpeechBrain LR schedule has counted (``None``: it does not say).

    Example
    -------
    >>> from speechbrain.nnet.schedulers import WarmAndExpDecayLRSchedule
    >>> _schedule_position(WarmAndExpDecayLRSchedule(1e-3, 2, 10))
    0
    """
    for attr in ("current_step", "n_steps"):
        if hasattr(schedule, attr):
            return int(getattr(schedule, attr))
    return None


class DistillBrain(StageRecords, sb.Brain):
    """Task fine-tuning with optional layerwise distillation from a teacher.

    Arguments
    ---------
    modules : dict
        Must hold ``model``: a HF wav2vec2/HuBERT/WavLM model or converted student.
    hparams : dict
        ``guidance`` (a Guidance, or None = no teacher), ``encoder_opt_class``,
        ``head_opt_class``, the keys of :data:`DISTILL_DEFAULTS` and those of the
        task's :attr:`TASK_DEFAULTS` (a key left out takes its default).
    teacher : torch.nn.Module, optional
        The transformer teacher (not for ``unguided``; for ``waypoint`` the Brain
        loads teachers itself with ``hparams["teacher_loader"]``).
    **kwargs
        Passed to :class:`speechbrain.Brain`.
    """

    #: A task's own options and their defaults (declared by each task's Brain).
    TASK_DEFAULTS = {}

    def __init__(self, modules=None, hparams=None, teacher=None, **kwargs):
        hparams = dict(hparams or {})
        for old, new in RENAMED.items():
            if hparams.get(old) is not None:
                raise ConfigError(f"hparams key '{old}' was replaced by {new}; rename it "
                                  "(see recipes/*/hparams/cald.yaml)")
        for k, v in {**DISTILL_DEFAULTS, **self.TASK_DEFAULTS}.items():
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
        hp = self.hparams
        self.faults = FaultGuard(max_bad_fraction=hp.max_bad_fraction,
                                 max_nonfinite_steps=hp.max_nonfinite_steps,
                                 bad_items_file=hp.bad_items_file)
        self.train_stats = None
        self.last_stats = None
        self._eval_split = None  # the test split being evaluated (see evaluate_split)
        self._nonfinite = None  # this step's micro-batches had a non-finite loss (on device)
        self._batch_ids, self._batch_terms = [], {}
        self._teacher_has_grads = False
        self.teacher_optimizers = {}
        self._terms = {}
        config = getattr(unwrap(self.modules.model), "config", None)
        if guidance is not None and guidance.mode != "unguided" and config is not None:
            if getattr(config, "layerdrop", 0.0):
                # A dropped layer has no hidden state to align with the teacher's.
                logger.info("layer alignment: LayerDrop %.2f -> 0", config.layerdrop)
                config.layerdrop = 0.0
        if self.distributed_launch:
            run_opts = kwargs.get("run_opts")
            given = (hparams.get("find_unused_parameters") is not None
                     or "find_unused_parameters" in getattr(run_opts, "overridden_args",
                                                            run_opts or {}))
            off = self.hparams.spec_augment_layer_loss == "off" and guidance is not None
            self.find_unused_parameters = ddp_find_unused_parameters(
                base_model(unwrap(self.modules.model)), self.find_unused_parameters, given,
                spec_augment_off=off)
        enable_feature_input(unwrap(self.modules.model))
        if self.hparams.spec_augment_layer_loss not in SPEC_AUGMENT_LAYER_LOSS:
            raise ConfigError(
                f"spec_augment_layer_loss '{self.hparams.spec_augment_layer_loss}' is not "
                f"one of {list(SPEC_AUGMENT_LAYER_LOSS)}")
        if self.hparams.spec_augment_layer_loss == "unmasked_frames":
            record_time_masks(unwrap(self.modules.model))
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
        # A deterministic teacher gives its distillation targets and its own training
        # loss from one forward pass (see compute_forward).
        self._teacher_reuses_pass = trainable and not stochastic_in_training(teacher)

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
    @staticmethod
    def sample_lengths(batch):
        """Samples of each waveform of ``batch`` (a list), read before the batch moves to
        the device (afterwards reading them would wait for it)."""
        wavs, rel = batch.sig
        return (rel.cpu() * wavs.shape[1]).round().long().tolist()

    def model_inputs(self, batch, model, lengths=None):
        """``input_values`` (features when cached) and the sample-level attention mask.

        The model's waveform settings (:func:`~cald_speech.features.waveform_settings`)
        apply: each utterance normalised alone when it asks for ``do_normalize``, and
        resampled from the corpus's 16 kHz when it was trained at another rate.
        ``lengths``: :meth:`sample_lengths` of the batch (read here when not given).
        """
        wavs, rel = batch.sig
        wavs = wavs.to(self.device)
        lengths = self.sample_lengths(batch) if lengths is None else lengths
        n = (rel.to(self.device) * wavs.shape[1]).round().long()  # the same, on the device
        settings = waveform_settings(unwrap(model))
        cache = self.hparams.feature_cache
        if cache is None and settings.sampling_rate == SAMPLE_RATE:
            mask = (torch.arange(wavs.shape[1], device=self.device)[None] < n[:, None]).long()
            return settings.normalize_padded(wavs, lengths), mask
        singles = [w[:k] for w, k in zip(wavs, lengths)]
        if settings.sampling_rate != SAMPLE_RATE:
            singles = [resample(w, SAMPLE_RATE, settings.sampling_rate) for w in singles]
        if cache is not None:
            feats, mask = cache.batch(unwrap(model), batch.id, [w.cpu() for w in singles])
            return feats.to(self.device), mask.to(self.device)
        lengths = [int(w.numel()) for w in singles]
        padded = wavs.new_zeros(len(singles), max(lengths))
        for i, w in enumerate(singles):
            padded[i, : lengths[i]] = w
        mask = (torch.arange(padded.shape[1], device=self.device)[None]
                < torch.tensor(lengths, device=self.device)[:, None]).long()
        return settings.normalize_padded(padded, lengths), mask

    def teacher_inputs(self, batch, inputs, amask, lengths=None):
        """The student's inputs when both share a CNN (or take waveforms); else the teacher's."""
        cache = self.hparams.feature_cache
        student = unwrap(self.modules.model)
        if cache is None:
            same = waveform_settings(self.teacher) == waveform_settings(student)
        else:
            same = cache.fingerprint(self.teacher) == cache.fingerprint(student)
        return (inputs, amask) if same else self.model_inputs(batch, self.teacher, lengths)

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
        lengths = self.sample_lengths(batch)
        batch = batch.to(self.device)
        model = self.modules.model
        step = self.optimizer_step
        g = self.guidance
        use_teacher = stage == sb.Stage.TRAIN and g is not None and g.uses_teacher(step)
        need_hid = use_teacher and g.layer_weight(step) > 0
        inputs, amask = self.model_inputs(batch, model, lengths)
        off = need_hid and self.hparams.spec_augment_layer_loss == "off"
        with spec_augment_disabled(unwrap(model)) if off else contextlib.nullcontext():
            hid, logits = self.run_model(model, inputs, amask, need_hid)
        out = {"hid": hid, "logits": logits, "inputs": inputs, "amask": amask,
               "lengths": lengths}
        if need_hid and self.hparams.spec_augment_layer_loss == "unmasked_frames":
            out["time_mask"] = time_mask(unwrap(model))
        out["mask"] = self.frame_mask(model, amask, batch)
        if use_teacher:
            if g.mode == "waypoint":
                self._ensure_waypoint_teacher()
            t_inputs, t_amask = self.teacher_inputs(batch, inputs, amask, lengths)
            if self._teacher_due(stage) and self._teacher_reuses_pass:
                # Train and eval mode give the same outputs: one pass serves as the
                # student's targets (detached) and as the teacher's own training loss.
                self.teacher.train()
                t_hid, t_logits = self.run_model(self.teacher, t_inputs, t_amask, need_hid)
                self.teacher.eval()
                out["t_train"] = (t_logits, t_amask)
                t_logits = t_logits.detach()
                t_hid = None if t_hid is None else tuple(h.detach() for h in t_hid)
            else:
                with torch.no_grad():
                    t_hid, t_logits = self.run_model(self.teacher, t_inputs, t_amask, need_hid)
            out["t_hid"], out["t_logits"] = t_hid, t_logits
        return out

    def compute_objectives(self, predictions, batch, stage):
        """Task loss plus the distillation terms the guidance asks for at this step."""
        mask = predictions["mask"]
        loss = self.task_loss(predictions["logits"], mask, batch, stage)
        terms = {"task": loss.detach()}
        if "t_logits" in predictions:
            step = self.optimizer_step
            w_layer = self.hparams.alpha_layer * self.guidance.layer_weight(step)
            w_logit = self.hparams.alpha_logit * self.guidance.logit_weight(step)
            if w_layer > 0:
                layer_mask = mask
                if predictions.get("time_mask") is not None:
                    layer_mask = mask & ~predictions["time_mask"]
                layer = masked_layer_loss(
                    predictions["hid"], predictions["t_hid"], layer_mask,
                    self.hparams.layer_indices, self.hparams.layer_weights,
                )
                loss = loss + w_layer * layer
                terms["layer"] = layer.detach()
            if w_logit > 0:
                kd = self.kd_loss(predictions["logits"], predictions["t_logits"], mask)
                loss = loss + w_logit * kd
                terms["kd"] = kd.detach()
        terms["total"] = loss.detach()
        self._batch_terms = terms
        # A non-finite loss is not averaged in (decided on the device: no wait here).
        self._accumulate(stage, terms, keep=torch.isfinite(terms["total"]))
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
        """One micro-batch: forward, backward, and an optimiser step when one is due.

        SpeechBrain's loop, plus the co-trained teacher of trajectory guidance: on a
        student step that is due for a teacher update, every micro-batch adds the
        teacher's task loss (under the same autocast and loss scaling, divided by the
        accumulation factor) and the teacher steps once, with the student.

        Every micro-batch runs its backward pass, also with a non-finite loss: under DDP
        the gradient all-reduce happens there, and a process that left it out would
        leave the others waiting. Whether the step is applied is decided once per step,
        by every process together (:meth:`optimizers_step`). Nothing here waits for the
        device: the loss is returned as a device tensor.
        """
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self._batch_ids = list(getattr(batch, "id", []))
        ok = getattr(batch, "ok", None)  # still on the host here
        self.faults.batch(self._batch_ids,
                          [False] * len(self._batch_ids) if ok is None
                          else [not x for x in torch.as_tensor(ok).bool().tolist()],
                          getattr(batch, "wav", None))
        self.on_fit_batch_start(batch, should_step)
        with self.no_sync(not should_step):
            with self.training_ctx:
                outputs = self.compute_forward(batch, sb.Stage.TRAIN)
                loss = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
                t_loss = self._teacher_loss(batch, outputs)
            self._batch_terms = {**self._batch_terms, "total": loss.detach()}
            bad = nonfinite(loss, t_loss)
            self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
            scaled = self.scaler.scale(loss / self.grad_accumulation_factor)
            if t_loss is not None:  # the graphs are disjoint: one backward serves both
                scaled = scaled + self.scaler.scale(t_loss / self.grad_accumulation_factor)
                self._teacher_has_grads = True
            scaled.backward()
        stepped = should_step and self.optimizers_step()
        self.on_fit_batch_end(batch, outputs, loss, stepped)
        return loss.detach()

    @property
    def bad_items(self):
        """Training items with unreadable audio in the current epoch."""
        return self.faults.bad_items

    @property
    def bad_items_total(self):
        """Training items with unreadable audio since the run (re)started."""
        return self.faults.bad_items_total

    def _teacher_due(self, stage=sb.Stage.TRAIN):
        g = self.guidance
        return (stage == sb.Stage.TRAIN and g is not None
                and g.trains_teacher(self.optimizer_step))

    def _teacher_loss(self, batch, outputs):
        """The co-trained teacher's task loss on this batch (None when no update is due)."""
        if not self._teacher_due():
            return None
        if "t_train" in outputs:
            logits, amask = outputs["t_train"]
        else:
            inputs, amask = self.teacher_inputs(batch, outputs["inputs"], outputs["amask"],
                                                outputs.get("lengths"))
            self.teacher.train()
            _, logits = self.run_model(self.teacher, inputs, amask, False)
            self.teacher.eval()
        mask = self.frame_mask(self.teacher, amask, batch)
        loss = self.task_loss(logits, mask, batch, sb.Stage.TRAIN)
        self._accumulate(sb.Stage.TRAIN, {"teacher_task": loss.detach()})
        return loss

    def optimizers_step(self):
        """Steps every optimiser once (the teacher's too, when it has gradients).

        As SpeechBrain's, except that the gradient norm is clipped over all parameter
        groups of an optimiser (SpeechBrain clips only the first group), and that a
        non-finite loss or gradient skips the whole step (:mod:`cald_speech.distill.faults`;
        under fp16 the loss scaler skips steps with overflowing gradients itself). In a
        distributed run that decision is taken by every process together, from one
        reduced flag: a fault in any process skips the step in all of them.

        Returns
        -------
        bool
            Whether the parameters were updated.
        """
        opts = list(self.freeze_optimizers(self.optimizers_dict).values())
        step_teacher = self._teacher_has_grads
        if step_teacher:  # DDP: one teacher, the same in every process
            teacher_opts = list(self.teacher_optimizers.values())
            average_gradients([p for o in teacher_opts for p in optimizer_params(o)])
            opts += teacher_opts
        norms = []
        for opt in opts:
            self.scaler.unscale_(opt)
            norms.append(torch.nn.utils.clip_grad_norm_(optimizer_params(opt),
                                                        self.max_grad_norm))
        loss_bad, self._nonfinite = self._nonfinite, None
        if loss_bad is None:
            loss_bad = torch.zeros((), dtype=torch.bool, device=self.device)
        bad = loss_bad
        if not self.scaler.is_enabled():  # (fp16: the loss scaler skips those steps)
            bad = bad | nonfinite(*norms).to(bad.device)
        # The one wait per step: every process learns whether any saw a fault.
        if self.faults.agree(bad, self.optimizer_step, getattr(self, "_batch_ids", []),
                             self._batch_terms, loss_nonfinite=loss_bad):
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            self.scaler.update()
            self._teacher_has_grads = False
            return False
        self._set_learning_rates(step_teacher)
        for opt in opts:
            self.scaler.step(opt)
        self.scaler.update()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        self.optimizer_step += 1
        self._teacher_has_grads = False
        return True

    def _set_learning_rates(self, teacher):
        """Sets each optimiser's learning rate for the update about to be made: update k
        runs at its schedule's value k + 1 (a fresh schedule is advanced once first, so
        the first update runs at the warm-up's first non-zero rate — neither at zero nor,
        as a schedule applied only after each update leaves it, at the optimiser's
        initial rate, the peak)."""
        hp = self.hparams
        pairs = [(getattr(hp, f"{name}_lr_schedule", None), opt)
                 for name, opt in self.optimizers_dict.items()]
        if teacher:
            pairs += [(getattr(hp, f"teacher_{name}_lr_schedule"), opt)
                      for name, opt in self.teacher_optimizers.items()]
        for schedule, opt in pairs:
            if schedule is None:
                continue
            if _schedule_position(schedule) == 0:
                schedule(opt)
            schedule(opt)

    def _task_optimizers(self, model, prefix, encoder_opt_class, head_opt_class):
        """{"encoder", "head"} optimisers of ``model`` with weight-decay groups."""
        head = self.head_module(model)
        opts = {
            "encoder": make_optimizer(encoder_opt_class, model, f"{prefix}encoder",
                                      exclude=head.parameters()),
            "head": make_optimizer(head_opt_class, head, f"{prefix}head"),
        }
        return {k: v for k, v in opts.items() if v is not None}

    def init_optimizers(self):
        """Encoder and head optimisers; the same pair for a co-trained teacher.

        Each optimiser has two parameter groups: weight decay for matrices, none for
        biases, norm weights and parameters marked ``_no_weight_decay`` (the SSM's
        ``A_log``, ``dt_bias``, ``D``).
        """
        hp = self.hparams
        self.optimizers_dict = self._task_optimizers(
            unwrap(self.modules.model), "", hp.encoder_opt_class, hp.head_opt_class)
        self.encoder_optimizer = self.optimizers_dict.get("encoder")
        self.head_optimizer = self.optimizers_dict.get("head")
        if self.guidance is not None and self.guidance.mode == "trajectory":
            self.teacher_optimizers = self._task_optimizers(
                self.teacher, "teacher ", hp.teacher_encoder_opt_class or hp.encoder_opt_class,
                hp.teacher_head_opt_class or hp.head_opt_class)
        if self.checkpointer is not None:
            if "random_state" not in self.checkpointer.recoverables:
                self.checkpointer.add_recoverable("random_state", RandomState())
                self.checkpointer.add_recoverable("train_stage", TrainStageState(self))
            for name, opt in self.optimizers_dict.items():
                self.checkpointer.add_recoverable(f"{name}_optimizer", opt)
            if self.teacher_optimizers:
                self.checkpointer.add_recoverable("teacher", self.teacher)
                for name, opt in self.teacher_optimizers.items():
                    self.checkpointer.add_recoverable(f"teacher_{name}_optimizer", opt)
                    schedule = getattr(hp, f"teacher_{name}_lr_schedule")
                    if schedule is not None:
                        self.checkpointer.add_recoverable(f"teacher_{name}_lr_schedule",
                                                          schedule)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Per-step log lines and teacher waypoints."""
        if not should_step:
            return
        hp = self.hparams
        step = self.optimizer_step
        if hp.log_every and step % hp.log_every == 0:
            self._write_step_log(step)
        if hp.waypoint_every and step % hp.waypoint_every == 0:
            self.save_waypoint(step)

    def on_fit_start(self):
        """SpeechBrain's start (optimisers, recovery); then the step-0 waypoint.

        With ``waypoint_every`` set, a run that starts from scratch saves its starting
        point as ``step-0``: waypoint guidance then gives the student the head the
        teacher trajectory started from.
        """
        super().on_fit_start()
        hp = self.hparams
        if hp.waypoint_every and self.optimizer_step == 0 and hp.waypoint_dir is not None:
            if not os.path.isdir(os.path.join(hp.waypoint_dir, "step-0")):
                self.save_waypoint(0)

    def save_waypoint(self, step):
        """Saves the current model as waypoint ``step-<N>`` (for waypoint guidance)."""
        if self.hparams.waypoint_dir is None:
            raise ConfigError("waypoint_every is set but waypoint_dir is not")
        if not sb.utils.distributed.if_main_process():
            return
        path = os.path.join(self.hparams.waypoint_dir, f"step-{step}")
        unwrap(self.modules.model).save_pretrained(path)


__all__ = ["DISTILL_DEFAULTS", "RANK_KEY", "RENAMED", "SPEC_AUGMENT_LAYER_LOSS", "DistillBrain",
           "unwrap"]
