"""The SLURP intent recipe end to end on a tiny corpus in SLURP's layout, in every mode."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from cald_speech.errors import ConfigError, DataError
from cald_speech.tasks.intent.brain import IntentBrain
from cald_speech.tasks.intent.data import intent_dataset
from cald_speech.tasks.intent.model import IntentModel
from cald_speech.tasks.intent.recipe import build_intent_models, run_intent
from cald_speech.tasks.intent.recipe import main as intent_main
from cald_speech.testing import tiny_teacher

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "SLURP" / "intent"
INTENTS = [("alarm", "set"), ("alarm", "query"), ("play", "music"), ("weather", "query")]


def record(slurp_id, scenario, action, files):
    """A record in SLURP's own schema (dataset/slurp/*.jsonl)."""
    sentence = f"{scenario} {action} {slurp_id}"
    return {
        "slurp_id": slurp_id, "sentence": sentence, "sentence_annotation": sentence,
        "intent": f"{scenario}_{action}", "scenario": scenario, "action": action,
        "tokens": [{"surface": w, "id": i, "lemma": w, "pos": "NN"}
                   for i, w in enumerate(sentence.split())],
        "recordings": [{"file": f, "wer": 0.0, "ent_wer": None, "status": "correct"}
                       for f in files],
        "entities": [],
    }


def write_corpus(root):
    ann = root / "dataset" / "slurp"
    audio = root / "slurp_real"
    ann.mkdir(parents=True)
    audio.mkdir()
    rng = np.random.default_rng(0)
    splits = {
        "train": [record(i, *INTENTS[i % 4], [f"audio-{i}-headset.flac"]) for i in range(8)],
        "devel": [record(10 + i, *INTENTS[i], [f"audio-{10 + i}.flac"]) for i in range(2)],
        "test": [
            record(20, *INTENTS[2], ["audio-20-headset.flac", "audio-20.flac"]),
            record(21, *INTENTS[3], ["audio-21-headset.flac", "audio-21-missing.flac"]),
            record(22, "cooking", "recipe", ["audio-22.flac"]),  # label only in test
        ],
    }
    for split, recs in splits.items():
        with open(ann / f"{split}.jsonl", "w") as f:
            for rec in recs:
                f.write(json.dumps(rec) + "\n")
                for r in rec["recordings"]:
                    if "missing" not in r["file"]:
                        n = int(rng.integers(3200, 6400))
                        sf.write(audio / r["file"],
                                 (0.1 * rng.standard_normal(n)).astype("float32"), 16000)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("slurp"))


def run(hparams, out, corpus, *extra):
    argv = [
        str(hparams if os.path.isabs(hparams) else RECIPE / "hparams" / hparams),
        "--data_folder", str(corpus),
        "--output_folder", str(out), "--feature_cache_folder", str(out.parent / "cache"),
        "--number_of_epochs", "1", "--batch_size", "4", "--device", "cpu",
        "--warmup_updates", "1", "--total_updates", "10", "--log_every", "1", *extra,
    ]
    return run_intent(argv)


FAMILIES = {"wav2vec2-large-lv60": "Wav2Vec2Model", "hubert-large-ll60k": "HubertModel",
            "wavlm-base-plus": "WavLMModel"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def teacher(request, tmp_path_factory, corpus):
    """An intent teacher fine-tuned from a CTC folder of each model family."""
    runs = tmp_path_factory.mktemp(f"runs-{request.param}")
    # the start: a CTC model folder (as the ASR recipe writes), whose encoder is used
    ctc = tiny_teacher(request.param, head="ctc", feat_extract_norm="layer",
                       mask_time_prob=0.0)
    ctc.config._shape = request.param  # noted in config.json, checked below
    ctc.save_pretrained(runs / "asr_model")
    out = runs / "finetune"
    results = run("finetune.yaml", out, corpus, "--model_source", str(runs / "asr_model"),
                  "--waypoint_every", "1")
    return out, results


def steps(out):
    return [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]


def test_finetune_writes_model_metrics_and_counts(teacher):
    out, results = teacher
    r = results["test"]
    for key in ("intent_acc", "scenario_acc", "action_acc", "sa_acc"):
        assert 0 <= r[key] <= 100
    assert r["sa_acc"] == pytest.approx((r["scenario_acc"] + r["action_acc"]) / 2)
    # 4 recordings kept; one listed but missing; one label only in test
    assert r["n"] == 4 and r["skipped_recordings"] == 1
    assert r["unknown_intent"] == 1 and r["unknown_scenario"] == 1
    stats = json.loads((out / "intent_test.json").read_text())
    assert stats["n"] == 4 and "confusions" in stats
    assert (out / "intent_test_confusions.txt").read_text().startswith("Most confused")
    assert len((out / "intent_test_items.jsonl").read_text().splitlines()) == 4
    assert (out / "intent_valid.json").exists()
    model = IntentModel.from_pretrained(out / "model")
    assert model.head.tasks == ("scenario", "action")
    assert model.labels.labels("intent") == ["alarm_query", "alarm_set", "play_music",
                                             "weather_query"]
    start = json.loads((out.parent / "asr_model" / "config.json").read_text())
    assert type(model.encoder).__name__ == FAMILIES[start["_shape"]]
    info = json.loads((out / "model" / "cald_info.json").read_text())
    assert info["skipped_in_preparation"]["test"] == {"missing_recording": 1}
    assert sorted(os.listdir(out / "waypoints")) == ["step-0", "step-1", "step-2"]
    assert (out / "initial" / "intent_head.json").exists()
    assert [s["step"] for s in steps(out)] == [1, 2] and "task" in steps(out)[0]


@pytest.mark.parametrize("mode", ["unguided", "target", "hybrid", "trajectory", "waypoint"])
def test_cald_modes_run_end_to_end(teacher, corpus, tmp_path, mode):
    t_out, _ = teacher
    extra = ["--mode", mode, "--switch_step", "1"]
    if mode in ("unguided", "target", "hybrid"):
        extra += ["--teacher_source", str(t_out / "model")]
    else:
        extra += ["--pretrained_source", str(t_out / "initial")]
    if mode == "waypoint":
        extra += ["--waypoint_dir", str(t_out / "waypoints")]
    if mode == "target":
        extra += ["--alpha_logit", "1.0"]  # the logit KD of the intent heads too
    results = run("cald.yaml", tmp_path / mode, corpus, *extra)
    assert 0 <= results["test"]["sa_acc"] <= 100 and results["test"]["unknown_intent"] == 1
    cfg = json.loads((tmp_path / mode / "model" / "encoder" / "config.json").read_text())
    assert cfg["cald"]["mixers"][0]["name"] == "bimamba2"
    student = IntentModel.from_pretrained(tmp_path / mode / "model")
    assert student.labels == IntentModel.from_pretrained(t_out / "model").labels
    recs = steps(tmp_path / mode)
    expected = {
        "unguided": [False, False], "target": [True, True], "hybrid": [True, False],
        "trajectory": [True, True], "waypoint": [True, True],
    }[mode]
    assert [("layer" in s) for s in recs] == expected
    if mode == "target":
        assert all("kd" in s for s in recs)
    if mode == "trajectory":
        assert "train teacher_task" in (tmp_path / mode / "train_log.txt").read_text()


def broken_copy(corpus, tmp_path, split, lines):
    root = tmp_path / "broken"
    shutil.copytree(corpus, root)
    (root / "dataset" / "slurp" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_malformed_jsonl_names_the_line(corpus, tmp_path):
    good = (corpus / "dataset" / "slurp" / "train.jsonl").read_text().splitlines()
    root = broken_copy(corpus, tmp_path, "train", good[:2] + ['{"slurp_id": 3, "sentence'])
    with pytest.raises(DataError, match=r"train\.jsonl: line 3: not valid JSON"):
        run("finetune.yaml", tmp_path / "x", root)


def test_empty_split_is_a_clear_error(corpus, tmp_path):
    missing = json.dumps(record(30, "alarm", "set", ["audio-nowhere.flac"]))
    root = broken_copy(corpus, tmp_path, "devel", [missing])
    with pytest.raises(DataError, match="devel"):
        run("finetune.yaml", tmp_path / "x", root)
    with pytest.raises(SystemExit, match="^error: .*devel"):
        intent_main([str(RECIPE / "hparams" / "finetune.yaml"), "--data_folder", str(root),
                     "--output_folder", str(tmp_path / "y"), "--device", "cpu"])


def test_bad_settings_fail_early(teacher, corpus, tmp_path):
    t_out, _ = teacher
    with pytest.raises(ConfigError, match="did you mean 'pooling'"):
        run("cald.yaml", tmp_path / "a", corpus, "--poolin", "mean")
    with pytest.raises(ConfigError, match="unknown heads"):
        run("finetune.yaml", tmp_path / "b", corpus, "--heads", "slots")
    # target guidance needs a fine-tuned intent teacher, not a bare encoder
    with pytest.raises(ConfigError, match="not a fine-tuned intent model"):
        run("cald.yaml", tmp_path / "c", corpus, "--mode", "target",
            "--teacher_source", str(t_out.parent / "asr_model"))
    with pytest.raises(DataError, match="model folder not found"):
        run("cald.yaml", tmp_path / "d", corpus, "--mode", "target",
            "--teacher_source", str(tmp_path / "missing"))


def head_state(model):
    return {k: v.clone() for k, v in model.head.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_students_start_with_a_copy_of_the_right_head(teacher):
    t_out, _ = teacher
    labels = IntentModel.from_pretrained(t_out / "model").labels
    base = {"mixer": {"name": "bimamba2"}, "switch_step": 1}
    # target: convert(fine-tuned teacher encoder) + a copy of its trained head
    model, t, _, _ = build_intent_models(
        {**base, "mode": "target", "teacher_source": str(t_out / "model")}, labels)
    trained = head_state(IntentModel.from_pretrained(t_out / "model"))
    assert same(head_state(model), trained) and same(head_state(t), trained)
    assert model.head is not t.head
    assert model.encoder.layer_kinds() == ["mixer:bimamba2"] * 2
    # trajectory from the fine-tune run's start: its head, for student and teacher alike
    model, t, g, _ = build_intent_models(
        {**base, "mode": "trajectory", "pretrained_source": str(t_out / "initial")}, labels)
    initial = head_state(IntentModel.from_pretrained(t_out / "initial"))
    assert same(head_state(model), initial) and same(head_state(t), initial)
    assert not same(initial, trained) and g.mode == "trajectory"
    # from an encoder-only folder: one new head, shared by student and co-trained teacher
    model, t, _, _ = build_intent_models(
        {**base, "mode": "trajectory", "heads": "intent",
         "pretrained_source": str(t_out.parent / "asr_model")}, labels)
    assert model.head.tasks == ("intent",) and same(head_state(model), head_state(t))
    # waypoint: teachers are the saved intent models, label maps checked
    model, t, g, loader = build_intent_models(
        {**base, "mode": "waypoint", "pretrained_source": str(t_out / "initial"),
         "waypoint_dir": str(t_out / "waypoints")}, labels)
    assert t is None and [s for s, _ in g.waypoints] == [0, 1, 2]
    assert isinstance(loader(g.waypoints[0][1]), IntentModel)
    assert g.waypoint_pace == 1.0
    # a 1-update student paced to end on the teacher's last waypoint (update 2)
    _, _, g, _ = build_intent_models(
        {**base, "mode": "waypoint", "pretrained_source": str(t_out / "initial"),
         "waypoint_dir": str(t_out / "waypoints"), "waypoint_pace": "auto",
         "total_updates": 1}, labels)
    assert g.waypoint_pace == 2.0


def test_unreadable_audio_is_masked_counted_and_scored_wrong(teacher, tmp_path):
    import speechbrain as sb

    t_out, _ = teacher
    model = IntentModel.from_pretrained(t_out / "model").train()
    rng = np.random.default_rng(1)
    lines = ["ID,duration,wav,semantics,transcript,scenario,action,intent"]
    for i, (s, a) in enumerate(INTENTS[:3]):
        path = tmp_path / f"u{i}.flac"
        sf.write(path, (0.1 * rng.standard_normal(4000)).astype("float32"), 16000)
        lines.append(f"u{i},0.25,{path},{{}},x,{s},{a},{s}_{a}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    ds, report = intent_dataset(tmp_path / "t.csv", model.labels)
    assert report["unknown"]["items"] == 0
    victim = tmp_path / "u1.flac"
    victim.write_bytes(victim.read_bytes()[:60])  # passes the header check, fails on read
    hp = {"encoder_opt_class": lambda p: torch.optim.SGD(p, lr=0.0),
          "head_opt_class": lambda p: torch.optim.SGD(p, lr=0.0),
          "guidance": None, "metrics_file": str(tmp_path / "intent_{split}.txt"),
          "max_bad_fraction": 0.5}
    brain = IntentBrain(modules={"model": model}, hparams=hp, run_opts={"device": "cpu"})
    brain.fit(sb.utils.epoch_loop.EpochCounter(1), ds,
              train_loader_kwargs={"batch_size": 3}, progressbar=False)
    assert brain.train_stats["bad_items"] == 1 and np.isfinite(brain.train_stats["loss"])
    brain.evaluate(ds, test_loader_kwargs={"batch_size": 3}, progressbar=False)
    stats = brain.last_stats
    assert stats["n"] == 3 and stats["unreadable"] == 1 and stats["intent_acc"] <= 200 / 3
    assert "u1 " in (tmp_path / "intent_test.txt").read_text()
    items = [json.loads(x) for x in (tmp_path / "intent_test_items.jsonl").read_text().splitlines()]
    assert [i["ID"] for i in items if i["hyp"] is None] == ["u1"] and len(items) == 3


# Tones that a classifier tells apart from mean-pooled frames of a random encoder.
TONES = {("alarm", "set"): 300.0, ("play", "music"): 1200.0, ("weather", "query"): 3000.0}


def write_tone_corpus(root, per_class):
    """A SLURP-layout corpus whose label is the pitch of a tone; every split's records
    are grouped by label, as SLURP's own are by scenario."""
    ann = root / "dataset" / "slurp"
    audio = root / "slurp_real"
    ann.mkdir(parents=True)
    audio.mkdir()
    rng = np.random.default_rng(0)
    sid = 0
    for split, n in per_class.items():
        with open(ann / f"{split}.jsonl", "w") as f:
            for (scenario, action), hz in TONES.items():
                for _ in range(n):
                    sid += 1
                    name = f"audio-{sid}.flac"
                    f.write(json.dumps(record(sid, scenario, action, [name])) + "\n")
                    t = np.arange(int(rng.integers(4000, 9600))) / 16000
                    wav = rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * hz * t + rng.uniform(0, 6))
                    wav += 0.02 * rng.standard_normal(t.size)
                    sf.write(audio / name, wav.astype("float32"), 16000)
    return root


def test_finetune_learns_a_separable_task_from_label_grouped_data(tmp_path):
    # Labels, heads, loss, optimisers and checkpoint choice together must learn what a
    # linear probe on the pooled frames can (chance: 33 %).
    corpus = write_tone_corpus(tmp_path / "tones", {"train": 20, "devel": 4, "test": 8})
    ctc = tiny_teacher("wav2vec2-large-lv60", head="ctc", feat_extract_norm="layer",
                       mask_time_prob=0.0)
    ctc.save_pretrained(tmp_path / "asr_model")
    out = tmp_path / "run"
    results = run_intent([
        str(RECIPE / "hparams" / "finetune.yaml"), "--data_folder", str(corpus),
        "--output_folder", str(out), "--feature_cache_folder", str(tmp_path / "cache"),
        "--model_source", str(tmp_path / "asr_model"), "--device", "cpu",
        "--number_of_epochs", "8", "--batch_size", "4", "--warmup_updates", "1",
        "--total_updates", "120", "--lr_decay", "1.0", "--lr_head", "0.003",
        "--waypoint_every", "null",
    ])
    assert results["test"]["n"] == 24
    assert results["test"]["scenario_acc"] >= 90.0
    assert results["test"]["intent_acc"] >= 90.0


def test_transcribe_cli_classifies_with_teacher_and_student(teacher, corpus, tmp_path, capsys):
    """cald-transcribe on each family's intent teacher and its converted student."""
    from cald_speech.inference import main
    from cald_speech.student import convert

    t_out, _ = teacher
    t_model = IntentModel.from_pretrained(t_out / "model")
    student = IntentModel(convert(t_model.encoder), t_model.head, t_model.labels)
    student.save_pretrained(tmp_path / "student")
    wavs = sorted(str(p) for p in (corpus / "slurp_real").glob("audio-2[0-9]*.flac"))
    assert len(wavs) == 4
    for folder in (t_out / "model", tmp_path / "student"):
        capsys.readouterr()
        assert main(["--model", str(folder), "--format", "json", "--no-progress",
                     "--device", "cpu", *wavs]) == 0
        got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        model = IntentModel.from_pretrained(folder).eval()
        for w, r in zip(wavs, got):
            x = torch.from_numpy(sf.read(w, dtype="float32")[0])[None]
            with torch.no_grad():  # one unpadded file through the saved model
                ref = model.predict(model(x).logits)[0]
            assert {k: r[k] for k in ("intent", "scenario", "action")} == ref, w
