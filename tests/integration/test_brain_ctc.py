"""The distillation Brain on a tiny CTC task: guidance modes, resume, bad audio."""

import copy
import json

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from cald_speech.data.pipeline import add_ctc_targets, audio_dataset
from cald_speech.data.tokenizer import CharTokenizer
from cald_speech.distill.checkpoints import AtomicCheckpointer
from cald_speech.distill.guidance import Guidance
from cald_speech.errors import ConfigError
from cald_speech.features import FeatureCache
from cald_speech.tasks.asr.brain import CTCBrain
from cald_speech.tasks.recipe import loader_opts
from tests.integration.test_asr_recipe import check_wer_files

WORDS = ["A CAT", "THE DOG", "NO", "YES I DO", "IT'S ME", "GO HOME"]


def tiny_ctc(seed=0, vocab=29):
    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, vocab_size=vocab,
        feat_extract_norm="layer", do_stable_layer_norm=True, pad_token_id=0,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
    )
    return Wav2Vec2ForCTC(cfg)


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["ID,duration,wav,spk_id,wrd"]
    for i, w in enumerate(WORDS):
        n = 3200 + 800 * i
        wav = (0.1 * rng.standard_normal(n)).astype("float32")
        path = tmp_path / f"u{i}.flac"
        sf.write(path, wav, 16000)
        lines.append(f"u{i},{n / 16000},{path},1,{w}")
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def make_brain(tmp_path, model, corpus, teacher=None, guidance=None, cache=True, **hp):
    tok = CharTokenizer()
    counter = sb.utils.epoch_loop.EpochCounter(limit=hp.pop("epochs", 1))
    hparams = {
        "encoder_opt_class": lambda p: torch.optim.AdamW(p, lr=1e-3),
        "head_opt_class": lambda p: torch.optim.AdamW(p, lr=1e-3),
        "tokenizer": tok,
        "guidance": guidance,
        "feature_cache": FeatureCache(tmp_path / "cache") if cache else None,
        "step_log": str(tmp_path / "steps.jsonl"),
        "log_every": 1,
        **hp,
    }
    ckpt = AtomicCheckpointer(  # the recipes' checkpointer
        tmp_path / "save", recoverables={"model": model, "counter": counter}
    )
    brain = CTCBrain(
        modules={"model": model}, hparams=hparams, teacher=teacher,
        run_opts={"device": "cpu"}, checkpointer=ckpt,
    )
    ds, _ = audio_dataset(corpus, required=("wrd",), sorting="ascending")
    add_ctc_targets(ds, tok)
    return brain, ds, counter


def fit(brain, ds, counter, batch_size=2, shuffle_seed=None):
    if shuffle_seed is None:
        opts = {"batch_size": batch_size}
    else:  # what the recipes pass for sorting: random
        opts = loader_opts({"batch_size": batch_size, "sorting": "random",
                             "seed": shuffle_seed}, ds, True)
    brain.fit(counter, ds, train_loader_kwargs=opts, progressbar=False)


def seen_ids(brain):
    """Records the ids of every training batch the brain runs."""
    ids, orig = [], brain.compute_forward

    def recording(batch, stage):
        if stage == sb.Stage.TRAIN:
            ids.extend(batch.id)
        return orig(batch, stage)

    brain.compute_forward = recording
    return ids


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_target_guidance_leaves_teacher_unchanged(tmp_path, corpus):
    teacher = tiny_ctc(0)
    student = copy.deepcopy(teacher)
    torch.nn.init.normal_(student.wav2vec2.encoder.layers[0].attention.q_proj.weight)
    before_t, before_s = params(teacher), params(student)
    brain, ds, counter = make_brain(tmp_path, student, corpus, teacher, Guidance("target"))
    fit(brain, ds, counter)
    after_t = params(teacher)
    assert all(torch.equal(before_t[k], after_t[k]) for k in before_t)
    assert not teacher.training
    changed = [k for k, v in params(student).items() if not torch.equal(v, before_s[k])]
    assert any("encoder.layers" in k for k in changed) and any("lm_head" in k for k in changed)
    assert not any("feature_extractor" in k for k in changed)  # CNN frozen
    terms = brain.train_stats
    assert terms["layer"] > 0 and terms["kd"] >= 0 and terms["task"] > 0
    assert (tmp_path / "steps.jsonl").read_text().count("\n") == 3


def test_trajectory_teacher_is_trained(tmp_path, corpus):
    teacher = tiny_ctc(0)
    student = tiny_ctc(1)
    before = params(teacher)
    g = Guidance("trajectory", teacher_update_every=2)
    brain, ds, counter = make_brain(tmp_path, student, corpus, teacher, g)
    fit(brain, ds, counter, batch_size=1)
    changed = [k for k, v in params(teacher).items() if not torch.equal(v, before[k])]
    assert any("encoder.layers" in k for k in changed)
    assert not any("feature_extractor" in k for k in changed)
    assert brain.stage_terms(sb.Stage.TRAIN)["teacher_task"] > 0


def test_train_feature_encoder_trains_the_cnn_and_refuses_a_cache(tmp_path, corpus):
    model = tiny_ctc(0)
    before = params(model)
    brain, ds, counter = make_brain(tmp_path, model, corpus, cache=False,
                                    train_feature_encoder=True)
    fit(brain, ds, counter)
    changed = [k for k, v in params(model).items() if not torch.equal(v, before[k])]
    assert any("feature_extractor" in k for k in changed)
    with pytest.raises(ConfigError, match="cache_features: false"):
        make_brain(tmp_path, tiny_ctc(0), corpus, cache=True, train_feature_encoder=True)


@pytest.mark.parametrize("steps,pace", [((2, 4), 1), ((4, 8), 2)])
def test_waypoint_switches_teachers_at_the_right_steps(tmp_path, corpus, steps, pace):
    # a 6-update student moves to the second waypoint at its update 2: step for step
    # at pace 1, and at pace 2 when the teacher's run is twice as long (teacher update 4)
    names = [f"w{s}" for s in steps]
    loads = []
    teachers = dict(zip(names, (tiny_ctc(2), tiny_ctc(4))))

    def loader(path):
        loads.append((brain.optimizer_step, path))
        return teachers[path]

    g = Guidance("waypoint", waypoints=list(zip(steps, names)), waypoint_pace=pace)
    brain, ds, counter = make_brain(tmp_path, tiny_ctc(1), corpus, None, g, teacher_loader=loader)
    fit(brain, ds, counter, batch_size=1)
    assert brain.optimizer_step == 6
    assert loads == [(0, names[0]), (2, names[1])]


def test_unguided_and_hybrid_schedules(tmp_path, corpus):
    teacher = tiny_ctc(0)
    g = Guidance("hybrid", switch_step=2, logit_kd_after_switch=False)
    brain, ds, counter = make_brain(tmp_path, tiny_ctc(1), corpus, teacher, g)
    fit(brain, ds, counter)
    recs = [json.loads(x) for x in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [("layer" in r) for r in recs] == [True, True, False]
    with pytest.raises(Exception, match="needs a teacher"):
        make_brain(tmp_path, tiny_ctc(1), corpus, None, Guidance("target"))


class Crash(RuntimeError):
    pass


def test_random_sorting_reshuffles_every_epoch_reproducibly(tmp_path, corpus):
    orders = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        brain, ds, counter = make_brain(tmp_path / name, tiny_ctc(0), corpus, cache=False,
                                        epochs=3)
        ids = seen_ids(brain)
        fit(brain, ds, counter, batch_size=2, shuffle_seed=seed)
        orders[name] = [ids[i:i + 6] for i in range(0, 18, 6)]
    manifest = [f"u{i}" for i in range(6)]  # the dataset's own (ascending) order
    epochs = orders["a"]
    assert all(sorted(e) == manifest for e in epochs)  # each epoch: every item once
    assert len({tuple(e) for e in epochs}) == 3  # a new order every epoch
    assert manifest not in epochs
    assert orders["b"] == epochs  # same seed, same orders
    assert orders["c"] != epochs


@pytest.mark.parametrize("shuffle_seed", [None, 5])
def test_resume_mid_epoch_gives_the_same_continuation(tmp_path, corpus, shuffle_seed):
    ref = tiny_ctc(3)
    init = params(ref)
    brain, ds, counter = make_brain(tmp_path / "a", ref, corpus, cache=False, epochs=2)
    ref_ids = seen_ids(brain)
    fit(brain, ds, counter, batch_size=1, shuffle_seed=shuffle_seed)
    final_ref = params(ref)

    model = tiny_ctc(3)
    model.load_state_dict(init)
    brain, ds, counter = make_brain(tmp_path / "b", model, corpus, cache=False, epochs=2)
    brain.ckpt_interval_steps = 1
    ids = seen_ids(brain)
    orig = brain.compute_forward

    def crashing(batch, stage):
        if stage == sb.Stage.TRAIN and brain.optimizer_step == 9:  # mid second epoch
            raise Crash()
        return orig(batch, stage)

    brain.compute_forward = crashing
    with pytest.raises(Crash):
        fit(brain, ds, counter, batch_size=1, shuffle_seed=shuffle_seed)

    model2 = tiny_ctc(9)  # different weights: everything must come from the checkpoint
    brain2, ds2, counter2 = make_brain(tmp_path / "b", model2, corpus, cache=False, epochs=2)
    ids2 = seen_ids(brain2)
    fit(brain2, ds2, counter2, batch_size=1, shuffle_seed=shuffle_seed)
    assert brain2.optimizer_step == 12
    assert ids[:9] + ids2 == ref_ids  # the batch that crashed is run again, once
    for k, v in params(model2).items():
        torch.testing.assert_close(v, final_ref[k], rtol=1e-5, atol=1e-6)


def test_unreadable_audio_is_masked_and_counted(tmp_path, corpus):
    # Truncate one file after the header check: it fails only when read.
    listed = tmp_path / "bad_items.tsv"
    brain, ds, counter = make_brain(tmp_path, tiny_ctc(0), corpus, cache=False, epochs=2,
                                    max_bad_fraction=0.5, bad_items_file=str(listed))
    victim = tmp_path / "u5.flac"
    victim.write_bytes(victim.read_bytes()[:60])
    fit(brain, ds, counter)
    # counted per epoch (the log line of each epoch), and for the run; listed in a file
    assert brain.train_stats["bad_items"] == 1 and brain.bad_items_total == 2
    assert np.isfinite(brain.train_stats["loss"])
    assert listed.read_text().splitlines() == [f"1\tu5\t{victim}", f"2\tu5\t{victim}"]


def test_evaluate_writes_wer(tmp_path, corpus):
    brain, ds, counter = make_brain(
        tmp_path, tiny_ctc(0), corpus, wer_file=str(tmp_path / "wer_{split}.txt")
    )
    brain.evaluate(ds, test_loader_kwargs={"batch_size": 3}, progressbar=False)
    # the rates are those recomputed from the per-utterance files, which hold every item
    check_wer_files(tmp_path / "wer_test.txt", brain.last_stats, [f"u{i}" for i in range(6)])
    assert brain.last_stats["CER"] > 0
