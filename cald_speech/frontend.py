"""Fits a wav2vec2-style CNN front end to log-mel filterbank features.

A wav2vec2 / HuBERT / WavLM model built from a config has a randomly initialised
raw-waveform CNN. Self-supervised pretraining is what normally teaches that CNN to
hear; offline, without a pretrained checkpoint, a frozen *random* CNN is a very poor
front end (the transformer above it learns about ten times slower than on log-mel
features). This module gives the CNN a cheap, honest start instead: it trains the CNN,
through a temporary linear read-out, to reproduce per-utterance normalised log-mel
features computed on the same 25 ms windows and 20 ms hop as its own frames. The
read-out is thrown away; the CNN keeps what it learned and is then frozen (and its
output cached) by the training recipes as usual.

It is a stand-in for self-supervised pretraining of the front end, not one: the CNN
learns a filterbank, nothing about speech.

Command line::

    python -m cald_speech.frontend --config hparams/models/tiny_wav2vec2.yaml \\
        --train-csv train.csv --valid-csv dev.csv --out models/frontend --steps 1500

Example
-------
>>> import torch
>>> target = log_mel_target(torch.randn(8000), n_mels=8)
>>> target.shape                     # frames of wav2vec2's CNN: (8000 - 400) // 320 + 1
torch.Size([24, 8])
"""

import argparse
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cald_speech.cli import add_version, fail, parse
from cald_speech.errors import CaldError, ConfigError, DataError
from cald_speech.families import PREFIXES
from cald_speech.features import base_model
from cald_speech.inference import cnn_geometry

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000


_MEL_CACHE = {}


def _mel_transform(n_mels, window, hop):
    key = (n_mels, window, hop)
    if key not in _MEL_CACHE:
        import torchaudio

        _MEL_CACHE[key] = torchaudio.transforms.MelSpectrogram(
            SAMPLE_RATE, n_fft=window, win_length=window, hop_length=hop, n_mels=n_mels,
            center=False, power=2.0,
        )
    return _MEL_CACHE[key]


def log_mel_target(wav, n_mels=80, window=400, hop=320):
    """Per-utterance mean/variance normalised log-mel features, one row per CNN frame.

    With ``window``/``hop`` equal to the CNN's receptive field and stride (400/320 for
    wav2vec2), frame ``t`` covers exactly the samples that CNN frame ``t`` sees.

    Arguments
    ---------
    wav : torch.Tensor
        (N,) waveform at 16 kHz, N >= ``window``.
    n_mels, window, hop : int
        Mel bands, analysis window and hop, in samples.

    Returns
    -------
    torch.Tensor
        (frames, n_mels), each band with zero mean and unit variance over the utterance.

    Example
    -------
    >>> t = log_mel_target(torch.randn(16000), n_mels=40)
    >>> t.shape, bool(t.mean(0).abs().max() < 1e-4)
    (torch.Size([49, 40]), True)
    """
    if wav.shape[-1] < window:
        raise ValueError(f"need at least {window} samples, got {wav.shape[-1]}")
    spec = _mel_transform(n_mels, window, hop)(wav.float())
    feats = torch.log(spec + 1e-6).transpose(-1, -2)
    std = feats.std(-2, keepdim=True, correction=0)
    return (feats - feats.mean(-2, keepdim=True)) / (std + 1e-5)


class FrontEndFit:
    """The CNN of ``model`` plus a linear read-out to ``n_mels`` log-mel bands.

    Arguments
    ---------
    model : transformers.PreTrainedModel
        A wav2vec2 / HuBERT / WavLM model (with or without a task head); its CNN is
        trained in place.
    n_mels : int
        Number of log-mel bands to reproduce.
    lr : float
        AdamW learning rate (CNN and read-out).

    Example
    -------
    >>> import torch
    >>> from transformers import Wav2Vec2Config, Wav2Vec2Model
    >>> _ = torch.manual_seed(0)
    >>> cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...     intermediate_size=32, conv_dim=(32, 32), conv_stride=(5, 64),
    ...     conv_kernel=(10, 80), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
    >>> fit = FrontEndFit(Wav2Vec2Model(cfg), n_mels=8, lr=3e-3)
    >>> t = torch.arange(16000) / 16000
    >>> wavs = [torch.sin(2 * math.pi * f * t) * (1 + torch.sin(6 * t)) for f in (300, 2000)]
    >>> before = fit.error(wavs)
    >>> for _ in range(60):
    ...     _ = fit.step(wavs)
    >>> fit.error(wavs) < 0.5 * before
    True
    """

    def __init__(self, model, n_mels=80, lr=1e-3):
        self.model = model
        self.cnn = base_model(model).feature_extractor
        self.n_mels = n_mels
        self.window, self.hop = cnn_geometry(base_model(model).config)
        channels = base_model(model).config.conv_dim[-1]
        self.readout = torch.nn.Linear(channels, n_mels)
        self.cnn.requires_grad_(True)
        params = list(self.cnn.parameters()) + list(self.readout.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.params = params

    def _batch(self, wavs):
        """Crops every waveform to the shortest one: no padding, exact group norm."""
        n = min(w.shape[-1] for w in wavs)
        if n < self.window:
            raise ValueError(f"waveforms shorter than the CNN's receptive field ({self.window})")
        crops = []
        for w in wavs:
            start = random.randint(0, w.shape[-1] - n)
            crops.append(w[start:start + n])
        x = torch.stack(crops).float()
        target = torch.stack([log_mel_target(c, self.n_mels, self.window, self.hop)
                              for c in crops])
        return x, target

    def _loss(self, x, target):
        pred = self.readout(self.cnn(x).transpose(1, 2))
        t = min(pred.shape[1], target.shape[1])
        return F.mse_loss(pred[:, :t], target[:, :t])

    def step(self, wavs):
        """One update on a list of waveforms; returns the MSE (per band, normalised)."""
        self.cnn.train()
        x, target = self._batch(wavs)
        loss = self._loss(x, target)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 5.0)
        self.optimizer.step()
        return loss.item()

    @torch.no_grad()
    def error(self, wavs):
        """Mean MSE over single utterances (1.0 = no better than predicting the mean)."""
        self.cnn.eval()
        errs = [self._loss(*self._batch([w])).item() for w in wavs]
        return sum(errs) / max(len(errs), 1)


def _read_wavs(csv_path, limit=None, max_seconds=None):
    from cald_speech.data.audio import load_audio
    from cald_speech.data.manifest import read_manifest

    rows = read_manifest(csv_path, required=("ID", "duration", "wav"))
    if limit:
        rows = rows[:limit]
    wavs, bad = [], 0
    for row in rows:
        try:
            wav, _ = load_audio(row["wav"])
        except DataError as exc:
            logger.warning("skipping %s: %s", row["wav"], exc.problem)
            bad += 1
            continue
        if max_seconds:
            wav = wav[: int(max_seconds * SAMPLE_RATE)]
        if wav.shape[-1] >= 400:
            wavs.append(wav)
        else:
            bad += 1
    if not wavs:
        raise DataError(csv_path, "no readable recording of at least 25 ms",
                        "check the 'wav' column and the audio files")
    return wavs, bad


def fit_front_end(model, train_wavs, valid_wavs=None, steps=1500, batch_size=8, lr=1e-3,
                  n_mels=80, log_every=100, log=print):
    """Trains the CNN of ``model`` to reproduce log-mel features; returns a report dict.

    The learning rate decays with a cosine to zero over ``steps``; the report holds the
    normalised MSE on ``valid_wavs`` (or on the first 64 training waveforms) before and
    after, where 1.0 means no better than predicting each band's mean.
    """
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    fit = FrontEndFit(model, n_mels=n_mels, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        fit.optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    check = valid_wavs if valid_wavs else train_wavs[:64]
    before = fit.error(check)
    log(f"front end: normalised log-mel MSE before {before:.3f}")
    t0, running = time.time(), []
    for step in range(1, steps + 1):
        running.append(fit.step(random.sample(train_wavs, min(batch_size, len(train_wavs)))))
        sched.step()
        if step % log_every == 0 or step == steps:
            log(f"front end: step {step}/{steps} train MSE {sum(running) / len(running):.3f}"
                f" ({time.time() - t0:.0f} s)")
            running = []
    after = fit.error(check)
    log(f"front end: normalised log-mel MSE after {after:.3f}")
    base_model(model).feature_extractor.requires_grad_(False)
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "n_mels": n_mels,
            "mse_before": round(before, 4), "mse_after": round(after, 4),
            "checked_on": "valid" if valid_wavs else "train[:64]",
            "seconds": round(time.time() - t0, 1)}


def main(argv=None):
    """``python -m cald_speech.frontend``: builds a model whose CNN hears a filterbank."""
    p = argparse.ArgumentParser(
        prog="python -m cald_speech.frontend",
        description="Build a wav2vec2-style model from a config and fit its CNN front end "
                    "to log-mel features; write it as a model folder for --model_source.")
    p.add_argument("--config", required=True, help="YAML/JSON of HF config values")
    p.add_argument("--family", default="wav2vec2", choices=tuple(PREFIXES))
    p.add_argument("--train-csv", required=True, help="manifest with a 'wav' column")
    p.add_argument("--valid-csv", help="held-out manifest for the reported error")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-mels", type=int, default=80)
    p.add_argument("--max-seconds", type=float, default=4.0,
                   help="use at most this much of each recording")
    p.add_argument("--seed", type=int, default=7)
    args, status = parse(add_version(p), argv)
    if args is None:
        return status
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import yaml

        from cald_speech.tasks.intent.model import encoder_from_config

        cfg_path = Path(args.config)
        if not cfg_path.is_file():
            raise DataError(cfg_path, "config file not found", "give a YAML of HF config values")
        config = yaml.safe_load(cfg_path.read_text()) or {}
        if not isinstance(config, dict):
            raise DataError(cfg_path, "not a mapping of config values",
                            "see hparams/models/tiny_wav2vec2.yaml")
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        model = encoder_from_config(config, args.family)
        train, bad_train = _read_wavs(args.train_csv, max_seconds=args.max_seconds)
        valid, bad_valid = (_read_wavs(args.valid_csv, limit=64, max_seconds=args.max_seconds)
                            if args.valid_csv else (None, 0))
        print(f"front end: {len(train)} training recordings ({bad_train} skipped)")
        report = fit_front_end(model, train, valid, steps=args.steps,
                               batch_size=args.batch_size, lr=args.lr, n_mels=args.n_mels)
        report.update(config=str(cfg_path), family=args.family, seed=args.seed,
                      train_csv=str(args.train_csv), skipped=bad_train + bad_valid,
                      what="CNN fitted to per-utterance normalised log-mel features; "
                           "transformer layers at random initialisation")
        out = Path(args.out)
        model.save_pretrained(out)
        (out / "front_end_fit.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"front end: wrote {out} (normalised MSE {report['mse_before']:.3f} -> "
              f"{report['mse_after']:.3f})")
    except CaldError as exc:
        return fail(p.prog, exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
