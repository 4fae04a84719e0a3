"""The starting model's training data: the corpus in memory, batches, augmentation, features.

:class:`Corpus` holds every utterance of a manifest in one flat tensor (decoded once);
:func:`length_batches` cuts batches of similar length; :func:`speed_perturb` and
:func:`add_noise` augment waveforms on the device; :class:`FeatureBank` runs a frozen CNN
once per utterance and augmentation variant so that training runs the transformer only.

Example
-------
>>> import torch
>>> batches = length_batches([100, 300, 120, 280, 90], max_samples=600,
...                          generator=torch.Generator().manual_seed(0))
>>> sorted(sorted(b) for b in batches)
[[0, 2, 4], [1, 3]]
>>> speed_perturb(torch.ones(2, 100), torch.tensor([100, 50]), 1.25)[1].tolist()
[80, 40]
"""

from pathlib import Path

import numpy as np
import torch

from cald_speech.errors import DataError
from cald_speech.features import base_model, pad_features

SAMPLE_RATE = 16000


def length_batches(lengths, max_samples, generator=None, jitter=0.0):
    """Batches of indices whose padded size (count x longest) stays within ``max_samples``.

    Indices are sorted by length (with a relative random ``jitter``, so that batches
    differ between epochs), cut into consecutive batches, and the batches shuffled.

    Example
    -------
    >>> length_batches([5, 1, 3], max_samples=6)
    [[1, 2], [0]]
    """
    lengths = torch.as_tensor(lengths, dtype=torch.float64)
    keys = lengths
    if jitter:
        keys = lengths * (1 + jitter * torch.rand(len(lengths), generator=generator,
                                                  dtype=torch.float64))
    batches, batch, longest = [], [], 0.0
    for i in torch.argsort(keys).tolist():
        longest_if = max(longest, float(lengths[i]))
        if batch and longest_if * (len(batch) + 1) > max_samples:
            batches.append(batch)
            batch, longest_if = [], float(lengths[i])
        batch.append(i)
        longest = longest_if
    if batch:
        batches.append(batch)
    if generator is not None:
        order = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[k] for k in order]
    return batches


def speed_perturb(wavs, lengths, factor):
    """Plays a padded batch ``factor`` times faster (tempo and pitch together).

    Band-limited resampling (:func:`torchaudio.functional.speed`, a windowed-sinc
    filter), so that speeding up does not fold energy above the new Nyquist rate back
    into the band, as linear interpolation does. Returns the (B, T / factor) batch and
    the new lengths.

    Example
    -------
    >>> import math
    >>> t = torch.arange(16000) / 16000
    >>> tone = torch.sin(2 * math.pi * 7800 * t)[None]   # above 16 kHz / 1.1 / 2
    >>> fast, lens = speed_perturb(tone, torch.tensor([16000]), 1.1)
    >>> lens.tolist(), bool((fast ** 2).mean() < 0.1 * (tone ** 2).mean())
    ([14546], True)
    """
    if factor == 1.0:
        return wavs, lengths
    import torchaudio.functional as AF

    out, new_lens = AF.speed(wavs.float(), SAMPLE_RATE, float(factor), lengths.to(wavs.device))
    return out.to(wavs.dtype), torch.clamp(new_lens.long(), 1, out.shape[-1])


def add_noise(wavs, lengths, noise, snr_db, generator):
    """Adds a random excerpt of ``noise`` to each valid signal at ``snr_db`` (B,) dB."""
    b, t = wavs.shape
    if len(noise) < t:
        noise = noise.repeat(t // len(noise) + 1)
    start = torch.randint(0, len(noise) - t + 1, (b,), generator=generator)
    idx = start[:, None] + torch.arange(t)[None]
    n = noise.to(wavs.device)[idx.to(wavs.device)]
    valid = torch.arange(t, device=wavs.device)[None] < lengths.to(wavs.device)[:, None]
    ps = (wavs.float() ** 2 * valid).sum(1) / lengths.to(wavs.device)
    pn = (n ** 2 * valid).sum(1) / lengths.to(wavs.device) + 1e-12
    scale = torch.sqrt(ps / pn / 10 ** (snr_db.to(wavs.device) / 10))
    return (wavs + scale[:, None] * n * valid).to(wavs.dtype)


def _sample_mask(width, lengths):
    """(B, width) long mask, 1 on each row's first ``lengths`` samples."""
    return (torch.arange(width, device=lengths.device)[None] < lengths[:, None]).long()


class Corpus:
    """Utterances of a manifest held in one flat tensor, with their CTC targets.

    Arguments
    ---------
    csv_path : str
        Manifest with ``ID``, ``wav`` and the text column (packed or not).
    tokenizer : CharTokenizer
        Encodes the (normalised) transcripts.
    text_column : str
        The transcript column.
    normalize : bool
        Normalise transcripts with :func:`cald_speech.data.text.normalize_text`.
    device : str
        Where the audio is kept.
    max_seconds : float or None
        Leave out longer utterances (counted).
    """

    def __init__(self, csv_path, tokenizer, text_column="wrd", normalize=True, device="cpu",
                 max_seconds=None, jobs=None):
        from cald_speech.data.manifest import read_manifest
        from cald_speech.data.pack import load_pack_audio
        from cald_speech.data.text import normalize_text

        rows = read_manifest(csv_path, required=("ID", "wav", text_column))
        audio = load_pack_audio(csv_path, jobs=jobs)
        self.ids, self.texts, targets, waves = [], [], [], []
        self.skipped = {}
        for r in rows:
            wav = audio[r["ID"]]
            text = normalize_text(r[text_column]) if normalize else " ".join(
                r[text_column].split())
            reason = None
            if not np.isfinite(wav).all():
                reason = "non-finite samples"
            elif len(wav) < 400:
                reason = "shorter than 25 ms"
            elif max_seconds and len(wav) > max_seconds * SAMPLE_RATE:
                reason = f"longer than {max_seconds} s"
            elif not text:
                reason = "empty transcript"
            if reason:
                self.skipped[r["ID"]] = reason
                continue
            self.ids.append(r["ID"])
            self.texts.append(text)
            targets.append(tokenizer.encode(text))
            waves.append(wav)
        if not self.ids:
            raise DataError(csv_path, "no usable utterance", "check the manifest and audio")
        self._store(waves, targets, device)

    @classmethod
    def from_waveforms(cls, waveforms, texts, tokenizer=None, device="cpu"):
        """A corpus of in-memory waveforms (for tests and examples)."""
        from cald_speech.data.tokenizer import CharTokenizer

        tokenizer = tokenizer or CharTokenizer()
        self = cls.__new__(cls)
        self.ids = [f"u{i}" for i in range(len(waveforms))]
        self.texts = list(texts)
        self.skipped = {}
        self._store([w.numpy() if torch.is_tensor(w) else w for w in waveforms],
                    [tokenizer.encode(t) for t in texts], device)
        return self

    def _store(self, waves, targets, device):
        self.lengths = torch.tensor([len(w) for w in waves])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        self.audio = torch.from_numpy(np.concatenate(waves).astype(np.float32)).to(
            device=device, dtype=torch.float16)
        self.targets = [torch.tensor(t, dtype=torch.long) for t in targets]
        self.hours = float(self.lengths.sum()) / SAMPLE_RATE / 3600

    def __len__(self):
        return len(self.ids)

    def inputs(self, indices, variant=0):
        """Padded waveforms (B, N) of ``indices`` and their mask (as :class:`FeatureBank`)."""
        wavs, lens, _ = self.batch(indices)
        return wavs, _sample_mask(wavs.shape[1], lens.to(wavs.device))

    def batch(self, indices):
        """Zero-padded (B, T) float32 audio on the corpus device, lengths, targets."""
        lens = self.lengths[indices]
        out = torch.zeros(len(indices), int(lens.max()), device=self.audio.device)
        for row, i in enumerate(indices):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            out[row, : b - a] = self.audio[a:b].float()
        return out, lens, [self.targets[i] for i in indices]


def _load_noise(noise_dir):
    if not noise_dir:
        return None
    from cald_speech.data.audio import load_audio

    files = sorted(p for p in Path(noise_dir).glob("*") if p.suffix.lower() in
                   (".wav", ".flac", ".ogg"))
    if not files:
        raise DataError(noise_dir, "no .wav/.flac/.ogg noise files", "give --noise-dir a "
                        "folder of noise recordings, or leave it out")
    return torch.cat([load_audio(str(f))[0] for f in files])


class FeatureBank:
    """Frozen-CNN features of a corpus under each augmentation variant, computed once.

    With the CNN frozen, its output depends only on the (augmented) waveform. Each
    utterance goes through the CNN alone, unpadded — as the recipes' feature cache does,
    so a group-norm CNN gives exactly its single-utterance features — once per variant
    (a speed factor, with or without a fixed noise draw), and the features are kept in
    memory. Training then runs only the transformer: the CNN, the dominant cost of a step
    at 16 kHz, runs once per utterance and variant instead of once per update.

    Arguments
    ---------
    model : transformers model
        The model whose (frozen) CNN computes the features.
    corpus : Corpus
        The utterances.
    variants : list of (float, bool)
        Speed factor and whether to add noise, per variant.
    noise : torch.Tensor, optional
        Noise for the noisy variants (one draw per utterance, ``snr`` dB range).
    snr : (float, float)
        SNR range in dB of the noisy variants.
    seed : int
        Seed of the noise draws.
    dtype : torch.dtype
        Storage type of the features.

    Example
    -------
    >>> from cald_speech.testing import tiny_teacher
    >>> from cald_speech.features import enable_feature_input
    >>> model = tiny_teacher("wav2vec2-base", head="ctc").eval()
    >>> corpus = Corpus.from_waveforms([torch.randn(4000), torch.randn(6000)], ["A", "B"])
    >>> bank = FeatureBank(model, corpus, [(1.0, False), (1.1, False)])
    >>> feats, mask = bank.inputs([0, 1], variant=0)
    >>> enable_feature_input(model)
    >>> ref = model(corpus.batch([1])[0]).logits
    >>> out = model(feats, attention_mask=mask).logits
    >>> torch.allclose(out[1, : ref.shape[1]], ref[0], atol=1e-3)
    True
    >>> bank.inputs([0, 1], variant=1)[1].sum(-1).tolist()   # samples after speed 1.1
    [3637, 5455]
    """

    def __init__(self, model, corpus, variants, noise=None, snr=(5.0, 30.0), seed=0,
                 dtype=torch.float16):
        fe = base_model(model).feature_extractor
        run = getattr(fe, "_cald_cnn_forward", fe.forward)
        gen = torch.Generator().manual_seed(seed)
        self.variants = [(float(s), bool(n)) for s, n in variants]
        if any(n for _, n in self.variants) and noise is None:
            raise DataError("--noise-dir", "noisy variants need noise recordings",
                            "give --noise-dir, or no noisy copies")
        self.feats, self.offsets, self.samples = [], [], []
        with torch.no_grad():
            for speed, noisy in self.variants:
                parts, samples = [], []
                for i in range(len(corpus)):
                    wav, lens, _ = corpus.batch([i])
                    wav, lens = speed_perturb(wav, lens, speed)
                    if noisy:
                        draw = snr[0] + (snr[1] - snr[0]) * torch.rand(1, generator=gen)
                        wav = add_noise(wav, lens, noise, draw, gen)
                    parts.append(run(wav[:, : int(lens[0])])[0].to(dtype))
                    samples.append(int(lens[0]))
                frames = torch.tensor([p.shape[-1] for p in parts])
                self.feats.append(torch.cat(parts, -1))
                self.offsets.append(torch.cat([torch.zeros(1, dtype=torch.long),
                                               frames.cumsum(0)]).tolist())
                self.samples.append(samples)

    def save(self, path):
        """Writes the bank to ``path`` (atomically: a torn write leaves no file)."""
        import os

        tmp = Path(str(path) + ".tmp")
        torch.save({"variants": self.variants, "feats": self.feats, "offsets": self.offsets,
                    "samples": self.samples}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        """A bank written by :meth:`save`."""
        self = cls.__new__(cls)
        state = torch.load(path, map_location="cpu", weights_only=True)
        for k in ("variants", "feats", "offsets", "samples"):
            setattr(self, k, state[k])
        self.variants = [tuple(v) for v in self.variants]
        return self

    def inputs(self, indices, variant=0):
        """Padded features (B, C, T') of ``indices`` and their sample-level mask (B, N)."""
        offs, feats = self.offsets[variant], self.feats[variant]
        parts = [feats[:, offs[i]:offs[i + 1]].float() for i in indices]
        return pad_features(parts, [self.samples[variant][i] for i in indices])
