"""The starting model's build: packed corpora and the in-memory CTC trainer."""

import csv
import importlib
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from cald_speech import pretrain
from cald_speech.data.pack import load_pack_audio, pack_manifests
from cald_speech.errors import ConfigError, DataError
from cald_speech.features import base_model
from cald_speech.student import load_model
from cald_speech.testing import tiny_teacher

WORDS = ["A CAB", "BAD", "DAB A CAD", "ACE"]
#: the training loop's module (``pretrain.train`` is its function)
loop = importlib.import_module("cald_speech.pretrain.train")


def _write_corpus(folder, n=8, seed=0):
    """``n`` chirps of different lengths with short transcripts; returns the manifest."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        samples = 3200 + 1600 * (i % 4) + int(rng.integers(0, 400))
        t = np.arange(samples) / 16000
        wav = 0.3 * np.sin(2 * np.pi * (200 + 300 * i) * t * (1 + t)) + 0.01 * rng.standard_normal(
            samples)
        path = folder / f"u{i}.flac"
        sf.write(path, wav.astype(np.float32), 16000)
        rows.append({"ID": f"u{i}", "duration": samples / 16000, "wav": str(path),
                     "wrd": WORDS[i % len(WORDS)]})
    return rows


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def test_length_batches_cover_every_index_once_within_the_budget():
    lengths = torch.randint(100, 5000, (300,)).tolist()
    g = torch.Generator().manual_seed(1)
    batches = pretrain.length_batches(lengths, max_samples=20000, generator=g, jitter=0.05)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 20000 or len(b) == 1
    # without jitter, a batch holds neighbours in length order: little padding
    plain = pretrain.length_batches(lengths, max_samples=20000)
    assert [lengths[i] for b in plain for i in b] == sorted(lengths)


def test_speed_perturbation_moves_pitch_and_length_together():
    t = torch.arange(16000) / 16000
    wav = torch.sin(2 * torch.pi * 500 * t)[None]
    out, lens = pretrain.speed_perturb(wav, torch.tensor([16000]), 1.1)
    assert int(lens) == out.shape[1] == math.ceil(16000 / 1.1)
    peak = torch.fft.rfft(out[0]).abs().argmax().item() * 16000 / out.shape[1]
    assert abs(peak - 550) < 5


def test_speed_perturbation_is_band_limited():
    # a 7.8 kHz tone played 1.1x faster lands above the 8 kHz Nyquist rate: a resampler
    # removes it; linear interpolation folds it back into the band (aliasing)
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * torch.pi * 7800 * t)[None]
    out, _ = pretrain.speed_perturb(tone, torch.tensor([16000]), 1.1)
    linear = torch.nn.functional.interpolate(tone[:, None], size=out.shape[1], mode="linear")[0]
    power = (tone ** 2).mean()
    assert (out ** 2).mean() < 0.1 * power < (linear ** 2).mean()


def _reference_tristage(step, warmup, total, decay_from, final):
    """The schedule written out segment by segment, in float64."""
    if step < warmup:
        return step / warmup
    start = max(warmup, decay_from * total)
    if step <= start:
        return 1.0
    # log-linear between (start, 1) and (total, final)
    frac = min(1.0, (step - start) / (total - start))
    return math.exp((1 - frac) * math.log(1.0) + frac * math.log(final))


@pytest.mark.parametrize("warmup,total,decay_from,final", [(50, 1000, 0.4, 0.05),
                                                           (300, 400, 0.5, 0.02)])
def test_tristage_schedule_holds_then_decays_to_its_final_rate(warmup, total, decay_from,
                                                               final):
    got = [loop.lr_factor(s, warmup, total, "tristage", decay_from, final)
           for s in range(total + 50)]
    ref = [_reference_tristage(s, warmup, total, decay_from, final) for s in range(total + 50)]
    assert np.allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert max(got) == 1.0 and got[total] == pytest.approx(final) and got[-1] == got[total]
    assert all(b <= a for a, b in zip(got[warmup:], got[warmup + 1:]))   # never rises again


def test_noise_is_added_at_the_requested_snr_and_padding_stays_silent():
    g = torch.Generator().manual_seed(0)
    wavs = torch.zeros(2, 8000)
    wavs[0, :8000] = torch.randn(8000, generator=g)
    wavs[1, :4000] = 0.1 * torch.randn(4000, generator=g)
    lens = torch.tensor([8000, 4000])
    noise = torch.randn(3000, generator=g)
    out = pretrain.add_noise(wavs, lens, noise, torch.tensor([10.0, 0.0]), g)
    assert torch.all(out[1, 4000:] == 0)
    for row, (n, snr) in enumerate(zip((8000, 4000), (10.0, 0.0))):
        sig = wavs[row, :n]
        added = out[row, :n] - sig
        measured = 10 * torch.log10((sig ** 2).mean() / (added ** 2).mean())
        assert abs(float(measured) - snr) < 0.1


def test_pack_round_trip_keeps_lengths_and_content(tmp_path):
    rows = _write_corpus(tmp_path / "audio")
    train = _write_csv(tmp_path / "train.csv", rows)
    subset = _write_csv(tmp_path / "subset.csv", rows[2:5])
    summary = pack_manifests([train, subset], tmp_path / "pack", shards=3, kbps=64)
    assert summary["recordings"] == 8 and summary["shards"] == 3
    packed = load_pack_audio(tmp_path / "pack" / "train.csv")
    assert set(load_pack_audio(tmp_path / "pack" / "subset.csv")) == {"u2", "u3", "u4"}
    for row in rows:
        ref, _ = sf.read(row["wav"], dtype="float32")
        got = packed[row["ID"]]
        assert len(got) == len(ref)
        snr = 10 * np.log10((ref ** 2).sum() / ((got - ref) ** 2).sum())
        assert snr > 10, (row["ID"], snr)   # lossy, but the right recording, aligned
    # an unpacked manifest reads the same way (whole files)
    plain = load_pack_audio(train)
    assert all(np.array_equal(plain[r["ID"]], sf.read(r["wav"], dtype="float32")[0])
               for r in rows)


def test_pack_refuses_manifests_with_the_same_name(tmp_path):
    rows = _write_corpus(tmp_path / "audio", n=2)
    (tmp_path / "b").mkdir()
    a = _write_csv(tmp_path / "train.csv", rows)
    b = _write_csv(tmp_path / "b" / "train.csv", rows)
    with pytest.raises(ConfigError, match="repeat"):
        pack_manifests([a, b], tmp_path / "pack")


def _args(tmp_path, out, *extra):
    return pretrain.build_parser().parse_args([
        "--init", str(tmp_path / "init"), "--train-csv", str(tmp_path / "train.csv"),
        "--dev-csv", str(tmp_path / "dev.csv"), "--out", str(out), "--device", "cpu",
        "--batch-seconds", "2", "--warmup", "2", "--eval-every", "3", "--updates", "6",
        "--noise-dir", str(tmp_path / "noise"), *extra])


@pytest.fixture
def corpus(tmp_path):
    rows = _write_corpus(tmp_path / "audio")
    _write_csv(tmp_path / "train.csv", rows)
    _write_csv(tmp_path / "dev.csv", rows[:3])
    (tmp_path / "noise").mkdir()
    sf.write(tmp_path / "noise" / "n.wav", np.random.default_rng(1).standard_normal(8000)
             .astype(np.float32) * 0.1, 16000)
    teacher = tiny_teacher("wav2vec2-base", head="ctc", mask_time_prob=0.0)
    teacher.save_pretrained(tmp_path / "init")
    return tmp_path, teacher


def test_training_keeps_the_front_end_and_writes_a_loadable_model(corpus, monkeypatch):
    tmp_path, teacher = corpus
    from transformers.models.wav2vec2 import modeling_wav2vec2 as w2v

    spans, compute = [], w2v._compute_mask_indices

    def spy(shape, mask_prob, mask_length, *a, **k):
        spans.append((shape[-1], mask_prob, mask_length))
        return compute(shape, mask_prob, mask_length, *a, **k)

    monkeypatch.setattr(w2v, "_compute_mask_indices", spy)
    config = json.loads((tmp_path / "init" / "config.json").read_text())
    (tmp_path / "init" / "config.json").write_text(json.dumps({**config,
                                                               "mask_time_prob": 0.05}))
    info = pretrain.train(_args(tmp_path, tmp_path / "run", "--test-csv",
                                f"dev={tmp_path / 'dev.csv'}", "--mask-feature-prob", "0.2",
                                "--mask-feature-length", "3"))
    # time masks over frames and channel masks over the 32 hidden channels, every update
    hidden = teacher.config.hidden_size
    assert spans.count((hidden, 0.2, 3)) == 6
    assert sum(1 for n, p, k in spans if (p, k) == (0.05, 10) and n != hidden) == 6
    model = load_model(tmp_path / "run" / "model")
    assert type(model).__name__ == "Wav2Vec2ForCTC"
    assert model.config.vocab_size == 29 and model.config.mask_time_prob == 0.05
    assert model.config.mask_feature_prob == teacher.config.mask_feature_prob  # not training's
    cnn, ref = (base_model(m).feature_extractor.state_dict() for m in (model, teacher))
    assert all(torch.equal(cnn[k], ref[k]) for k in ref)          # frozen front end kept
    assert not torch.equal(model.lm_head.weight, teacher.lm_head.weight)
    saved = json.loads((tmp_path / "run" / "model" / "cald_info.json").read_text())
    assert saved["results"]["dev"]["utterances"] == 3
    curve = json.loads((tmp_path / "run" / "curve.json").read_text())["curve"]
    assert [c["updates"] for c in curve] == [3, 6]
    assert saved["dev"]["CER"] == min(c["dev_CER"] for c in curve)
    assert info["best_at"] in (3, 6)


def test_an_interrupted_run_resumes_to_the_same_weights(corpus, monkeypatch):
    tmp_path, _ = corpus
    # The updates each run makes, by step number (each update sets the learning rate of
    # every parameter group from its step): a restart from scratch would make them all.
    trained = []
    lr_factor = loop.lr_factor

    def recording(step, *a):
        if not trained or trained[-1] != step:
            trained.append(step)
        return lr_factor(step, *a)

    monkeypatch.setattr(loop, "lr_factor", recording)
    # evaluations (and saved states) at updates 2 and 4 fall inside an epoch (3 batches)
    pretrain.train(_args(tmp_path, tmp_path / "whole", "--eval-every", "2"))
    assert trained == [0, 1, 2, 3, 4, 5]
    trained.clear()
    real_save = torch.save

    class Stop(Exception):
        pass

    def save_then_stop(obj, path, *a, **k):
        real_save(obj, path, *a, **k)
        if isinstance(obj, dict) and obj.get("step") == 4:
            assert obj["epoch_batches"]           # stopped in the middle of an epoch
            raise Stop

    monkeypatch.setattr(torch, "save", save_then_stop)
    with pytest.raises(Stop):
        pretrain.train(_args(tmp_path, tmp_path / "split", "--eval-every", "2"))
    monkeypatch.setattr(torch, "save", real_save)
    assert trained == [0, 1, 2, 3]
    trained.clear()
    # the run died inside the save of update 4's state: update 2's state is the last whole
    state = torch.load(tmp_path / "split" / "state.pt", weights_only=False)
    assert state["step"] == 2 and state["epoch_batches"]
    pretrain.train(_args(tmp_path, tmp_path / "split", "--eval-every", "2"))
    assert trained == [2, 3, 4, 5]                # only the updates that state lacked
    a = torch.load(tmp_path / "whole" / "state.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "split" / "state.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_feature_bank_is_kept_for_a_rerun_and_renewed_when_its_inputs_change(
        corpus, monkeypatch):
    tmp_path, _ = corpus
    built = []
    init = pretrain.FeatureBank.__init__

    def counting(self, model, corpus, variants, *a, **k):
        built.append(len(variants))
        init(self, model, corpus, variants, *a, **k)

    monkeypatch.setattr(pretrain.FeatureBank, "__init__", counting)
    out = tmp_path / "run"
    pretrain.train(_args(tmp_path, out, "--updates", "3"))
    assert built == [6, 1]                      # train (3 speeds x clean/noisy) and dev
    (saved,) = out.glob("feature_bank-*.pt")
    first = torch.load(out / "state.pt", weights_only=False)["model"]
    fresh = pretrain.FeatureBank.load(saved)
    # a run from scratch that reads the saved bank trains to the same weights
    (out / "state.pt").unlink()
    built.clear()
    pretrain.train(_args(tmp_path, out, "--updates", "3"))
    assert built == [1]                         # only the dev bank was computed
    again = torch.load(out / "state.pt", weights_only=False)["model"]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert fresh.variants == [(s, n) for n in (False, True) for s in (0.9, 1.0, 1.1)]
    # other variants: a new bank replaces the old one
    (out / "state.pt").unlink()
    built.clear()
    pretrain.train(_args(tmp_path, out, "--updates", "3", "--speed-perturb", "0"))
    assert built == [2, 1]
    assert [p.name for p in out.glob("feature_bank-*.pt")] != [saved.name]
    assert len(list(out.glob("feature_bank-*.pt"))) == 1


def test_a_resumed_run_can_change_its_update_budget(corpus, monkeypatch):
    tmp_path, _ = corpus
    seen = []
    lr_factor = loop.lr_factor

    def recording(step, warmup, total, *a):
        seen.append((step, total))
        return lr_factor(step, warmup, total, *a)

    monkeypatch.setattr(loop, "lr_factor", recording)
    out = tmp_path / "run"
    pretrain.train(_args(tmp_path, out, "--updates", "4", "--eval-every", "2"))
    seen.clear()
    info = pretrain.train(_args(tmp_path, out, "--updates", "7", "--eval-every", "2"))
    assert sorted(set(seen)) == [(s, 7) for s in range(4, 7)]   # only the new updates
    assert info["updates_planned"] == 7
    with pytest.raises(ConfigError, match="already made 7 updates"):
        pretrain.train(_args(tmp_path, out, "--updates", "5"))


def test_a_folder_without_a_front_end_is_refused(tmp_path):
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text('{"model_type": "wav2vec2"}')
    from safetensors.torch import save_file

    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(tmp_path / "init" /
                                                          "model.safetensors"))
    with pytest.raises(DataError, match="no CNN"):
        pretrain.build_model(tmp_path / "init")


def test_the_report_scores_each_model_as_the_wer_engine_does(corpus, capsys):
    from cald_speech.bench import starting_models as report
    from cald_speech.bench.wer import error_rates, norm_text
    from cald_speech.inference import Transcriber

    tmp_path, _ = corpus
    pretrain.train(_args(tmp_path, tmp_path / "run", "--updates", "3"))
    pretrain.train(_args(tmp_path, tmp_path / "run2", "--updates", "3", "--seed", "8"))
    old = tmp_path / "old.json"       # a recipe's results file, its curve as a string
    old.write_text(json.dumps({"runs": [{"valid_curve": str(
        [{"epoch": 1, "updates": 10, "CER": 80.0}, {"epoch": 2, "updates": 20, "CER": 70.5}])}]}))
    out = tmp_path / "report"
    assert report.main(["--model", f"new={tmp_path / 'run' / 'model'}",
                        f"other={tmp_path / 'run2' / 'model'}",
                        "--test", f"dev={tmp_path / 'dev.csv'}",
                        "--curve", f"new={tmp_path / 'run' / 'curve.json'}", f"old={old}",
                        "--output-dir", str(out)]) == 0
    saved = json.loads((out / "starting_models.json").read_text())
    assert saved["curves"]["old"] == [[10, 80.0], [20, 70.5]]
    assert [u for u, _ in saved["curves"]["new"]] == [3]
    rows = list(csv.DictReader(open(tmp_path / "dev.csv")))
    for name, folder in (("new", tmp_path / "run" / "model"),
                         ("other", tmp_path / "run2" / "model")):
        asr = Transcriber.from_pretrained(folder)
        hyps = [norm_text(asr.transcribe_file(r["wav"], timestamps=False).text) for r in rows]
        ref = error_rates([norm_text(r["wrd"]) for r in rows], hyps)
        assert saved["table"][name]["dev"]["CER"] == round(100 * ref["cer"], 2)
        assert saved["table"][name]["dev"]["WER"] == round(100 * ref["wer"], 2)
    assert "| new |" in (out / "starting_models.md").read_text()
    assert (out / "starting_models.png").read_bytes()[:4] == b"\x89PNG"
