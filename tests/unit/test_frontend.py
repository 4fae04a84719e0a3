"""Fitting a wav2vec2 CNN front end to log-mel features (python -m cald_speech.frontend)."""

import csv
import json
import math

import pytest
import soundfile as sf
import torch
import yaml
from transformers import Wav2Vec2Config, Wav2Vec2Model

from cald_speech import frontend
from cald_speech.features import cnn_fingerprint
from cald_speech.tasks.asr.model import load_ctc_model

TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            conv_dim=[24, 24], conv_stride=[5, 64], conv_kernel=[10, 80],
            num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)


def _tone(freq, seconds=1.0, seed=0):
    """A chord on ``freq`` with random partials, swelling and fading, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    wav = 0.01 * torch.randn(t.shape, generator=g)
    for f in (freq, *(200 + 5000 * torch.rand(3, generator=g)).tolist()):
        rate = 1 + 8 * torch.rand(1, generator=g).item()
        wav += 0.1 * torch.sin(2 * math.pi * f * t) * (1 + torch.sin(rate * t))
    return wav


def test_target_frames_are_the_cnn_frames():
    model = Wav2Vec2Model(Wav2Vec2Config(**TINY))
    field, hop = frontend.cnn_geometry(model.config)
    assert (field, hop) == (10 + 79 * 5, 320)
    for n in (405, 4000, 16000, 16123):
        wav = torch.randn(n)
        cnn_frames = model.feature_extractor(wav[None]).shape[-1]
        assert frontend.log_mel_target(wav, 8, field, hop).shape[0] == cnn_frames


def test_target_is_a_normalised_log_mel_of_each_window():
    wav = _tone(1000)
    t = frontend.log_mel_target(wav, n_mels=16)
    # By hand: the power spectrum of frame 3 through the same mel bank.
    mel = frontend._mel_transform(16, 400, 320)
    frames = wav.unfold(0, 400, 320)
    power = torch.fft.rfft(frames * torch.hann_window(400), n=400).abs() ** 2
    logmel = torch.log(power @ mel.mel_scale.fb + 1e-6)
    ref = (logmel - logmel.mean(0)) / (logmel.std(0, correction=0) + 1e-5)
    assert torch.allclose(t, ref, atol=1e-3)
    with pytest.raises(ValueError, match="at least 400"):
        frontend.log_mel_target(torch.randn(399))


def test_fit_lowers_the_error_on_held_out_recordings():
    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config(**TINY))
    train = [_tone(f, seed=i) for i, f in enumerate((200, 500, 900, 1500, 2500, 4000) * 2)]
    valid = [_tone(700, seed=9), _tone(3000, seed=10)]
    report = frontend.fit_front_end(model, train, valid, steps=100, batch_size=4, lr=3e-3,
                                    n_mels=8, log=lambda *_: None)
    assert report["mse_after"] < 0.75 * report["mse_before"]
    assert not any(p.requires_grad for p in model.feature_extractor.parameters())


def _corpus(tmp_path, freqs):
    rows = []
    for i, f in enumerate(freqs):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, _tone(f, seed=i).numpy(), 16000)
        rows.append({"ID": f"u{i}", "duration": "1.0", "wav": str(path)})
    path = tmp_path / f"{len(freqs)}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["ID", "duration", "wav"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_cli_writes_a_model_folder_the_recipes_can_start_from(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    train = _corpus(tmp_path, (300, 800, 1600, 3200))
    out = tmp_path / "fe"
    assert frontend.main(["--config", str(cfg), "--train-csv", str(train), "--out", str(out),
                          "--steps", "5", "--batch-size", "2", "--n-mels", "8"]) == 0
    report = json.loads((out / "front_end_fit.json").read_text())
    assert report["steps"] == 5 and report["checked_on"] == "train[:64]"
    saved = Wav2Vec2Model.from_pretrained(out)
    fresh = Wav2Vec2Model(Wav2Vec2Config(**TINY))
    ctc = load_ctc_model(str(out), vocab_size=7)
    assert cnn_fingerprint(ctc) == cnn_fingerprint(saved) != cnn_fingerprint(fresh)
    assert ctc.lm_head.out_features == 7


def test_cli_names_a_missing_config_and_a_manifest_without_audio(tmp_path, capsys):
    train = _corpus(tmp_path, (300,))
    assert frontend.main(["--config", str(tmp_path / "nope.yaml"), "--train-csv", str(train),
                          "--out", str(tmp_path / "o")]) == 1
    assert "nope.yaml: config file not found" in capsys.readouterr().err
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    bad = tmp_path / "bad.csv"
    bad.write_text(f"ID,duration,wav\nx,1.0,{tmp_path / 'missing.wav'}\n")
    assert frontend.main(["--config", str(cfg), "--train-csv", str(bad),
                          "--out", str(tmp_path / "o")]) == 1
    assert "bad.csv: no readable recording" in capsys.readouterr().err
