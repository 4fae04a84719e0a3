"""Optimisation details a long run depends on: weight-decay groups, clipping, and the
co-trained teacher of trajectory guidance (one update per student step, its own
optimisers and schedules, checkpointed, one forward pass where it can)."""

import logging
from functools import partial

import pytest
import speechbrain as sb
import torch

from cald_speech.distill.guidance import Guidance
from cald_speech.distill.optim import decay_groups
from cald_speech.errors import ConfigError
from cald_speech.student import convert
from cald_speech.tasks.asr.brain import CTCBrain
from tests.integration.test_brain_ctc import Crash, corpus, fit, make_brain, params, tiny_ctc

__all__ = ["corpus"]  # a fixture, used by name


def schedules():
    new = partial(sb.nnet.schedulers.WarmAndExpDecayLRSchedule, lr=1e-3, n_warmup_steps=2,
                  total_steps=10, decay_factor=0.1)
    return {"teacher_encoder_lr_schedule": new(), "teacher_head_lr_schedule": new()}


def trajectory_brain(tmp_path, corpus, teacher=None, every=1, **hp):
    g = Guidance("trajectory", teacher_update_every=every)
    return make_brain(tmp_path, tiny_ctc(1), corpus, teacher or tiny_ctc(0), g, **hp)


def test_decay_groups_spare_ssm_parameters_biases_and_norms():
    student = convert(tiny_ctc(0))
    decayed, undecayed = ({id(p) for p in g["params"]} for g in decay_groups(student))
    names = dict(student.named_parameters())
    for name, p in names.items():
        spared = (name.rsplit(".", 1)[-1] in ("A_log", "dt_bias", "D", "bias")
                  or "norm" in name.lower())
        assert (id(p) in undecayed) == spared, name
        assert (id(p) in decayed) != spared, name
    assert any(n.endswith("A_log") for n in names) and any(n.endswith("dt_bias") for n in names)


def test_brain_optimisers_do_not_decay_the_ssm(tmp_path, corpus, caplog):
    student = convert(tiny_ctc(0))
    adamw = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
    with caplog.at_level(logging.INFO, logger="cald_speech.distill.optim"):
        brain, ds, counter = make_brain(tmp_path, student, corpus, encoder_opt_class=adamw,
                                        head_opt_class=adamw)
        brain.init_optimizers()
    opt = brain.optimizers_dict["encoder"]
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in student.named_parameters():
        if name.endswith(("A_log", "dt_bias", ".D")):
            assert wd[id(p)] == 0.0, name
    assert wd[id(student.wav2vec2.encoder.layers[0].feed_forward.output_dense.weight)] == 0.01
    head = brain.optimizers_dict["head"].param_groups
    assert [g["weight_decay"] for g in head] == [0.01, 0.0]  # lm_head weight, bias
    lines = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("encoder optimiser:") for m in lines) == 1


def test_clipping_covers_every_parameter_group(tmp_path, corpus):
    model = tiny_ctc(0)
    sgd = partial(torch.optim.SGD, lr=1.0)
    brain, _, _ = make_brain(tmp_path, model, corpus, encoder_opt_class=sgd,
                             head_opt_class=sgd, max_grad_norm=1.0)
    brain.init_optimizers()
    bias = model.wav2vec2.encoder.layers[0].feed_forward.output_dense.bias  # no-decay group
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    bias.grad.fill_(100.0)
    before = bias.detach().clone()
    brain.optimizers_step()
    assert (bias.detach() - before).norm() == pytest.approx(1.0, rel=1e-4)


def count_forwards(model):
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(m.training))
    return calls


@pytest.mark.parametrize("accumulate", [1, 2])
def test_teacher_steps_once_per_student_step(tmp_path, corpus, accumulate):
    teacher = tiny_ctc(0)
    calls = count_forwards(teacher)
    sch = schedules()
    brain, ds, counter = trajectory_brain(tmp_path, corpus, teacher,
                                          grad_accumulation_factor=accumulate, **sch)
    fit(brain, ds, counter, batch_size=1)
    steps = 6 // accumulate
    assert brain.optimizer_step == steps
    for name, opt in brain.teacher_optimizers.items():
        assert {int(s["step"]) for s in opt.state.values()} == {steps}, name
        # one value per update, and the warm-up's zero skipped once at the start
        assert sch[f"teacher_{name}_lr_schedule"].current_step == steps + 1
    # deterministic teacher: its targets and its training loss come from one pass
    assert calls == [True] * 6


def test_teacher_with_dropout_gives_targets_in_eval_mode(tmp_path, corpus):
    teacher = tiny_ctc(0)
    teacher.config.hidden_dropout = 0.1
    for m in teacher.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    calls = count_forwards(teacher)
    brain, ds, counter = trajectory_brain(tmp_path, corpus, teacher, every=2)
    fit(brain, ds, counter, batch_size=1)
    # every step: the targets (eval); every second step also the teacher's update (train)
    assert calls == [False, False, True] * 3


def test_trajectory_teacher_matches_a_manual_update(tmp_path, corpus):
    """Two micro-batches: the teacher's step uses the mean of their gradients."""
    teacher = tiny_ctc(0)
    ref = tiny_ctc(0)
    sgd = partial(torch.optim.SGD, lr=0.5)  # unlike Adam, sensitive to the gradient's scale
    brain, ds, counter = trajectory_brain(tmp_path, corpus, teacher, grad_accumulation_factor=2,
                                          max_grad_norm=1e9, cache=False,
                                          teacher_encoder_opt_class=sgd,
                                          teacher_head_opt_class=sgd)
    batches = []
    orig = brain.compute_forward

    def recording(batch, stage):
        if stage == sb.Stage.TRAIN and len(batches) < 2:
            batches.append(batch)
        return orig(batch, stage)

    brain.compute_forward = recording
    brain.optimizer_step_limit = 1
    sb_counter = sb.utils.epoch_loop.EpochCounter(1)
    brain.fit(sb_counter, ds, train_loader_kwargs={"batch_size": 1}, progressbar=False)
    assert brain.optimizer_step == 1 and len(batches) == 2

    head = list(ref.lm_head.parameters())
    enc = [p for n, p in ref.named_parameters()
           if p.requires_grad and not n.startswith(("lm_head", "wav2vec2.feature_extractor"))]
    opts = [torch.optim.SGD(enc, lr=0.5), torch.optim.SGD(head, lr=0.5)]
    probe = CTCBrain(modules={"model": ref}, hparams={
        "encoder_opt_class": None, "head_opt_class": None, "guidance": None,
        "tokenizer": brain.hparams.tokenizer}, run_opts={"device": "cpu"})
    ref.train()
    for b in batches:
        inputs, amask = probe.model_inputs(b, ref)
        _, logits = probe.run_model(ref, inputs, amask, False)
        (probe.task_loss(logits, probe.frame_mask(ref, amask, b), b, sb.Stage.TRAIN) / 2).backward()
    for o in opts:
        o.step()
    got, want = params(teacher), params(ref)
    assert any(not torch.equal(want[k], v) for k, v in params(tiny_ctc(0)).items())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


def test_trajectory_resume_restores_teacher_optimisers_and_schedules(tmp_path, corpus):
    sch_ref = schedules()
    brain, ds, counter = trajectory_brain(tmp_path / "a", corpus, cache=False, epochs=2,
                                          **sch_ref)
    ref_teacher = brain.teacher
    fit(brain, ds, counter, batch_size=1)
    final = params(ref_teacher)

    brain, ds, counter = trajectory_brain(tmp_path / "b", corpus, cache=False, epochs=2,
                                          **schedules())
    brain.ckpt_interval_steps = 1
    orig = brain.compute_forward

    def crashing(batch, stage):
        if stage == sb.Stage.TRAIN and brain.optimizer_step == 8:
            raise Crash()
        return orig(batch, stage)

    brain.compute_forward = crashing
    with pytest.raises(Crash):
        fit(brain, ds, counter, batch_size=1)
    sch = schedules()
    brain2, ds2, counter2 = trajectory_brain(tmp_path / "b", corpus, tiny_ctc(5), cache=False,
                                             epochs=2, **sch)
    fit(brain2, ds2, counter2, batch_size=1)
    assert brain2.optimizer_step == 12
    assert sch["teacher_encoder_lr_schedule"].current_step == 12 + 1   # not skipped again
    for k, v in params(brain2.teacher).items():
        torch.testing.assert_close(v, final[k], rtol=1e-5, atol=1e-6)


def test_renamed_teacher_keys_fail_with_the_new_names(tmp_path, corpus):
    with pytest.raises(ConfigError, match="teacher_encoder_opt_class"):
        trajectory_brain(tmp_path, corpus, teacher_opt_class=torch.optim.AdamW)


def masking_ctc(seed):
    """tiny_ctc with SpecAugment time masking (its mask embedding exists only then)."""
    from transformers import Wav2Vec2ForCTC

    cfg = tiny_ctc(seed).config
    cfg.mask_time_prob, cfg.mask_time_length = 0.3, 2
    torch.manual_seed(seed)
    return Wav2Vec2ForCTC(cfg)


def one_batch(brain, ds):
    return next(iter(brain.make_dataloader(ds, sb.Stage.VALID, batch_size=3)))


@pytest.mark.parametrize("policy", ["all_frames", "unmasked_frames", "off"])
def test_spec_augment_policy_of_the_layer_loss(tmp_path, corpus, policy):
    import numpy as np

    from cald_speech.distill.losses import masked_layer_loss
    from cald_speech.features import record_time_masks, time_mask

    student = masking_ctc(1)
    record_time_masks(student)
    brain, ds, _ = make_brain(tmp_path, student, corpus, tiny_ctc(0), Guidance("target"),
                              spec_augment_layer_loss=policy)
    student.train()
    batch = one_batch(brain, ds)
    np.random.seed(0)
    out = brain.compute_forward(batch, sb.Stage.TRAIN)
    brain.compute_objectives(out, batch, sb.Stage.TRAIN)
    layer = brain.stage_terms(sb.Stage.TRAIN)["layer"]
    tm = time_mask(student)
    if policy == "off":
        assert tm is None
        return
    assert tm is not None and bool((tm & out["mask"]).any())
    keep = out["mask"] & ~tm if policy == "unmasked_frames" else out["mask"]
    want = masked_layer_loss(out["hid"], out["t_hid"], keep)
    assert layer == pytest.approx(float(want.detach()), rel=1e-6)
    other = out["mask"] if policy == "unmasked_frames" else out["mask"] & ~tm
    alt = masked_layer_loss(out["hid"], out["t_hid"], other).detach()
    assert layer != pytest.approx(float(alt))


def test_recording_time_masks_leaves_the_masks_unchanged():
    import copy

    import numpy as np

    from cald_speech.features import record_time_masks, time_mask

    plain = masking_ctc(2)
    wrapped = copy.deepcopy(plain)
    record_time_masks(wrapped)
    x = torch.randn(2, 6000)
    amask = torch.ones(2, 6000, dtype=torch.long)
    amask[1, 4000:] = 0
    outs = []
    for m in (plain, wrapped):
        m.train()
        np.random.seed(3)
        outs.append(m(x, attention_mask=amask).logits)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    tm = time_mask(wrapped)
    frames = wrapped.wav2vec2._get_feature_vector_attention_mask(tm.shape[1], amask)
    assert bool(tm.any()) and not bool((tm & ~frames).any())  # never on padding


def test_each_update_runs_at_its_schedules_rate_from_the_first(tmp_path, corpus):
    """Update k runs at schedule value k + 1 for the student's and the co-trained
    teacher's optimisers: the first update at the warm-up's first step (not at the
    optimiser's initial rate, nor at zero)."""
    new = partial(sb.nnet.schedulers.WarmAndExpDecayLRSchedule, lr=1e-3, n_warmup_steps=2,
                  total_steps=10, decay_factor=0.1)
    sch = {**schedules(), "encoder_lr_schedule": new(), "head_lr_schedule": new()}
    adamw = partial(torch.optim.AdamW, lr=1e-3)
    brain, ds, counter = trajectory_brain(tmp_path, corpus, encoder_opt_class=adamw,
                                          head_opt_class=adamw, **sch)
    seen = []
    real_step = brain.scaler.step

    def recording(opt, *a, **k):
        seen.append(opt.param_groups[0]["lr"])
        return real_step(opt, *a, **k)

    brain.scaler.step = recording
    fit(brain, ds, counter, batch_size=1)
    reference = new()          # the schedule's values, one per update, from value 1
    expected = []
    for _ in range(brain.optimizer_step + 1):
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        reference(probe)
        expected.append(probe.param_groups[0]["lr"])
    assert expected.pop(0) == 0.0 and expected[:2] == pytest.approx([5e-4, 1e-3])
    per_update = [seen[i:i + 4] for i in range(0, len(seen), 4)]  # 2 student + 2 teacher
    assert [u[0] for u in per_update] == pytest.approx(expected)
    assert all(len(set(u)) == 1 for u in per_update)
