"""Offline synthetic speech corpora in the real LibriSpeech and SLURP layouts.

Sentences (LJ Speech transcripts for LibriSpeech, SLURP annotation records for SLURP)
are normalised with :func:`cald_speech.data.text.normalize_text` and spoken by the
voice identities of :mod:`cald_speech.data.voices` (espeak-ng, flite and festival, the
latter two favoured). Each utterance gets its own speaking rate and pitch; a share of
them gets additive noise (5–30 dB SNR), room reverberation and a telephone channel
(300–3400 Hz band, 8 kHz, mu-law). Audio is written as 16 kHz mono FLAC.

LibriSpeech layout (``OUT/LibriSpeech/<split>/<speaker>/<chapter>/``)::

    <speaker>-<chapter>-<utt>.flac
    <speaker>-<chapter>.trans.txt        lines "<speaker>-<chapter>-<utt> WORDS ..."

SLURP layout::

    OUT/dataset/slurp/{train,devel,test}.jsonl   records in SLURP's own schema
    OUT/slurp_real/audio-<id>-headset.flac       close-talk recording
    OUT/slurp_real/audio-<id>.flac               far-field twin (reverberant)

Evaluation is held-out-voice: the speakers (voice identities) and the sentences of the
dev and test splits never occur in the train split, and sentences of the evaluation-only
text files (``eval/text/``) never occur in train or dev (``eval_texts=True`` builds the
test split from them). ``OUT/README.md`` and ``OUT/metadata.json`` record this, the
voices of each split, the counts, the seed and the options. The same seed gives the same
audio samples whatever the number of worker processes; a re-run with the same options
does nothing, and an interrupted run resumes (finished files are kept).

Example
-------
>>> import os, tempfile
>>> out = tempfile.mkdtemp()
>>> summary = synthesize_librispeech(
...     out, n_train=2, n_dev=1, n_test=1, seed=3, engines=["flite"], progress=False)
>>> splits = summary["splits"]
>>> splits["train-clean-100"]["utterances"], splits["test-clean"]["utterances"]
(2, 1)
>>> splits["test-clean"]["speakers"][0] in splits["train-clean-100"]["speakers"]
False
>>> synthesize_librispeech(
...     out, n_train=2, n_dev=1, n_test=1, seed=3, engines=["flite"], progress=False
... )["up_to_date"]
True
>>> import shutil; shutil.rmtree(out)
"""

import argparse
import hashlib
import json
import logging
import math
import multiprocessing
import multiprocessing.util
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from cald_speech import __version__
from cald_speech.data.text import normalize_text
from cald_speech.data.voices import (
    ENGINES,
    SAMPLE_RATE,
    Speaker,
    available,
    check_tools,
    list_voices,
    select_voices,
)
from cald_speech.errors import CaldError, ConfigError, DataError, ToolError

logger = logging.getLogger(__name__)

__all__ = [
    "SynthOptions",
    "synthesize_librispeech",
    "synthesize_slurp",
    "list_voices",
    "assign_voices",
    "voice_weights",
    "augment",
    "telephone",
    "format_summary",
    "default_data_dir",
    "main",
]

#: Default split names of the LibriSpeech corpus (those of the real corpus).
LIBRISPEECH_SPLITS = ("train-clean-100", "dev-clean", "test-clean")
#: Split names of the SLURP corpus (its annotation files).
SLURP_SPLITS = ("train", "devel", "test")
#: Name of the file that records how a corpus was made (and makes re-runs idempotent).
METADATA_FILE = "metadata.json"
#: Name of the table of every audio file: split, speaker, voice, rate, pitch, augmentation.
UTTERANCES_FILE = "utterances.tsv"
#: Version of the corpus format written here.
FORMAT_VERSION = 1
#: Utterances per LibriSpeech chapter.
CHAPTER_SIZE = 50
#: Spoken characters per second, to estimate durations before synthesis (on the slow
#: side, so that the estimate rarely falls short).
CHARS_PER_SECOND = 14.0
_CORPUS_CODES = {"librispeech": 1, "slurp": 2}


def default_data_dir():
    """The shared data folder: ``$CALD_SPEECH_DATA``, else ``shared/data`` next to the repo.

    Example
    -------
    >>> (default_data_dir() / "text").name
    'text'
    """
    env = os.environ.get("CALD_SPEECH_DATA")
    if env:
        return Path(env)
    beside_repo = Path(__file__).resolve().parents[3] / "shared" / "data"
    if beside_repo.is_dir():
        return beside_repo
    return Path.cwd().parent / "shared" / "data"


@dataclass
class SynthOptions:
    """Options shared by both corpora; all are recorded in ``metadata.json``.

    Arguments
    ---------
    seed : int
        Seed of every random choice (sentences, voices, rate, pitch, augmentation).
    voices : list of str, optional
        Voice identities to use (names, ``engine:voice`` or engine names; see
        :func:`cald_speech.data.voices.select_voices`). Default: every identity whose
        engine is installed.
    engines : list of str, optional
        Keep only identities of these engines (``espeak``, ``flite``, ``festival``).
    engine_weights : dict
        Relative share of utterances per engine (within each split).
    dev_voices, test_voices : int
        Number of identities held out for the dev and test splits (disjoint from train
        and from each other).
    rate : (float, float)
        Range of the per-utterance speaking-rate factor.
    pitch : (float, float)
        Range of the per-utterance pitch shift in semitones.
    noise_prob : float
        Share of utterances with additive noise, at an SNR drawn from ``snr_db``.
    snr_db : (float, float)
        Range of signal-to-noise ratios in dB.
    reverb_prob : float
        Share of utterances convolved with a room impulse response.
    telephone_prob : float
        Share of utterances passed through a telephone channel (300–3400 Hz band-pass,
        8 kHz, 8-bit mu-law).
    peak_db : (float, float)
        Range of the peak level in dBFS each file is normalised to (never clips).
    min_words, max_words : int
        Sentences with fewer/more words (after normalisation) are dropped.
    max_seconds : float
        Sentences whose estimated spoken duration (14 characters per second) exceeds
        this are dropped.
    eval_texts : bool
        Build the test split from the evaluation-only sentences (``eval/text/``).
    """

    seed: int = 1
    voices: list = None
    engines: list = None
    engine_weights: dict = None
    dev_voices: int = 4
    test_voices: int = 6
    rate: tuple = (0.88, 1.12)
    pitch: tuple = (-1.0, 1.0)
    noise_prob: float = 0.4
    snr_db: tuple = (5.0, 30.0)
    reverb_prob: float = 0.25
    telephone_prob: float = 0.1
    peak_db: tuple = (-6.0, -1.0)
    min_words: int = 2
    max_words: int = 30
    max_seconds: float = 12.0
    eval_texts: bool = False

    def __post_init__(self):
        if self.engine_weights is None:
            self.engine_weights = {"flite": 0.4, "festival": 0.4, "espeak": 0.2}
        if isinstance(self.voices, str):
            self.voices = [s for s in self.voices.split(",") if s.strip()]
        if isinstance(self.engines, str):
            self.engines = [s for s in self.engines.split(",") if s.strip()]
        for name in ("rate", "pitch", "snr_db", "peak_db"):
            value = getattr(self, name)
            try:
                lo, hi = (float(x) for x in value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name}={value!r} must be a pair (low, high)") from None
            if lo > hi:
                raise ConfigError(f"{name}={value!r}: low is above high")
            setattr(self, name, (lo, hi))
        for name in ("noise_prob", "reverb_prob", "telephone_prob"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name}={value!r} must lie in [0, 1]")
        if self.rate[0] <= 0:
            raise ConfigError(f"rate={self.rate!r} must be positive")
        if self.peak_db[1] > 0:
            raise ConfigError(f"peak_db={self.peak_db!r} must be at most 0 dBFS")
        for name in ("dev_voices", "test_voices", "min_words", "max_words"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must not be negative")
        if self.max_seconds <= 0:
            raise ConfigError(f"max_seconds={self.max_seconds!r} must be positive")
        for engine, weight in self.engine_weights.items():
            if engine not in ENGINES:
                raise ConfigError(f"engine_weights: unknown engine {engine!r}; known: "
                                  f"{', '.join(ENGINES)}")
            if weight < 0:
                raise ConfigError(f"engine_weights[{engine!r}]={weight} must not be negative")

    @classmethod
    def from_kwargs(cls, kwargs):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**kwargs)


# --------------------------------------------------------------------------- #
# Voices of each split.


def assign_voices(voices, heldout, seed):
    """Splits voice identities between held-out splits and train.

    Held-out identities are picked round-robin over the engines (flite, festival,
    espeak) so that every split hears every engine, preferring engine voices that no
    other held-out split uses yet.

    Arguments
    ---------
    voices : list of Voice
    heldout : list of (str, int)
        ``(split, number of identities)``, allocated in this order.
    seed : int

    Returns
    -------
    dict
        ``split -> list of Voice`` for the held-out splits, plus ``None -> the rest``
        (the training identities).

    Example
    -------
    >>> from cald_speech.data.voices import list_voices
    >>> parts = assign_voices(list_voices(), [("test", 6), ("dev", 4)], seed=1)
    >>> len(parts["test"]), len(parts["dev"]), len(parts[None])
    (6, 4, 26)
    >>> sorted({v.engine for v in parts["test"]})
    ['espeak', 'festival', 'flite']
    >>> set(parts["test"]) & set(parts[None])
    set()
    """
    rng = np.random.default_rng([int(seed), 97])
    order = [e for e in ("flite", "festival", "espeak") if any(v.engine == e for v in voices)]
    by_engine = {}
    for engine in order:
        group = [v for v in voices if v.engine == engine]
        by_engine[engine] = [group[i] for i in rng.permutation(len(group))]
    remaining = list(voices)
    used_bases = set()
    parts = {}
    for split, count in heldout:
        chosen = []
        turn = 0
        while len(chosen) < count and remaining:
            engine = order[turn % len(order)]
            turn += 1
            candidates = [v for v in by_engine[engine] if v in remaining]
            if not candidates:
                continue
            fresh = [v for v in candidates if v.base not in used_bases]
            pick = (fresh or candidates)[0]
            chosen.append(pick)
            remaining.remove(pick)
            used_bases.add(pick.base)
        parts[split] = sorted(chosen, key=lambda v: v.speaker)
    parts[None] = sorted(remaining, key=lambda v: v.speaker)
    return parts


def voice_weights(voices, engine_weights):
    """Sampling probability of each voice: an engine's weight shared by its voices.

    Example
    -------
    >>> from cald_speech.data.voices import select_voices
    >>> voices = select_voices(["flite-kal", "flite-slt", "espeak-en-us+f2"])
    >>> voice_weights(voices, {"flite": 0.8, "espeak": 0.2}).round(2).tolist()
    [0.4, 0.4, 0.2]
    """
    counts = Counter(v.engine for v in voices)
    w = np.array([engine_weights.get(v.engine, 0.0) / counts[v.engine] for v in voices])
    if w.sum() <= 0:
        w = np.ones(len(voices))
    return w / w.sum()


def _resolve_voices(opts):
    if opts.voices is None:
        everything = select_voices(None, opts.engines)
        voices = [v for v in everything if available(v)]
        left_out = sorted({v.base for v in everything} - {v.base for v in voices})
        if left_out:
            logger.warning("voices not installed, left out: %s", ", ".join(left_out))
        if not voices:
            check_tools(everything)  # raises, naming what to install
    else:
        voices = select_voices(opts.voices, opts.engines)
        check_tools(voices)
    return voices


def _split_voices(opts, voices, splits, counts):
    """Train/dev/test voices; ``splits`` = (train, dev, test) names."""
    train, dev, test = splits
    heldout = []
    if counts[test]:
        heldout.append((test, opts.test_voices))
    if counts[dev]:
        heldout.append((dev, opts.dev_voices))
    need = sum(k for _, k in heldout) + (1 if counts[train] else 0)
    for split, k in heldout:
        if k < 1:
            raise ConfigError(f"split {split!r} has utterances but {k} voices; give it at least 1")
    if need > len(voices):
        raise ConfigError(
            f"{len(voices)} voice identities cannot give {opts.test_voices} test + "
            f"{opts.dev_voices} dev voices and at least one train voice; use more voices or "
            "fewer held-out voices (test_voices/dev_voices, --test-voices/--dev-voices)"
        )
    parts = assign_voices(voices, heldout, opts.seed)
    return {train: parts[None], dev: parts.get(dev, []), test: parts.get(test, [])}


def voice_split(split_names=LIBRISPEECH_SPLITS, **options):
    """The voice identities each split of a corpus made with ``options`` gets.

    Lets another corpus use, e.g., only the training voices of this one.

    Example
    -------
    >>> parts = voice_split(seed=1, engines=["flite"], dev_voices=1, test_voices=1)
    >>> len(parts["dev-clean"]), len(parts["test-clean"])
    (1, 1)
    """
    opts = SynthOptions.from_kwargs(options)
    counts = dict.fromkeys(split_names, 1)
    parts = _split_voices(opts, _resolve_voices(opts), split_names, counts)
    return {split: [v.name for v in vs] for split, vs in parts.items()}


# --------------------------------------------------------------------------- #
# Texts.


def _check_text_file(path, what):
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} not found", "check the path, or pass another file")
    return path


def _read_tsv_sentences(path):
    """``ID<TAB>text`` lines (a line without a tab is all text) → list of (id, text)."""
    path = _check_text_file(path, "sentence file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot be read as UTF-8 text ({exc})",
                        "re-create it as UTF-8 'ID<TAB>sentence' lines") from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        sid, sep, text = line.partition("\t")
        if not sep:
            sid, text = f"{path.stem}-{lineno:06d}", line
        out.append((sid.strip(), text.strip()))
    return out


def _read_slurp_records(path):
    path = _check_text_file(path, "SLURP annotation file")
    from cald_speech.data.slurp import read_slurp_jsonl

    return [rec for _, rec in read_slurp_jsonl(path)]


def _keep_sentence(words, opts):
    n = len(words.split())
    return (
        n >= max(1, opts.min_words)
        and (not opts.max_words or n <= opts.max_words)
        and len(words) / CHARS_PER_SECOND <= opts.max_seconds
    )


def _file_digest(paths):
    h = hashlib.sha1()
    for p in paths:
        if p is not None and Path(p).is_file():
            h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- #
# Audio: augmentation and rendering (runs in the worker processes).

_TELEPHONE_SOS = signal.butter(6, [300, 3400], btype="bandpass", fs=8000, output="sos")


def _active_power(x, frame=320):
    n = len(x) // frame
    if n == 0:
        return float(np.mean(x**2)) + 1e-12
    energy = np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)
    active = energy[energy > energy.max() * 1e-3]
    return float(active.mean()) + 1e-12


def _mu_law(x, mu=255):
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    y = np.round((y + 1.0) / 2.0 * mu) / mu * 2.0 - 1.0
    return np.sign(y) * ((1.0 + mu) ** np.abs(y) - 1.0) / mu


def telephone(x):
    """A telephone channel: 8 kHz, 300–3400 Hz band-pass, 8-bit mu-law, back to 16 kHz.

    Arguments
    ---------
    x : numpy.ndarray
        (T,) float waveform at 16 kHz.

    Returns
    -------
    numpy.ndarray
        (T,) float64 waveform at 16 kHz, peak 0.9.

    Example
    -------
    >>> t = np.arange(16000) / 16000
    >>> low, mid = np.sin(2 * np.pi * 100 * t), np.sin(2 * np.pi * 1000 * t)
    >>> spectrum = np.abs(np.fft.rfft(telephone(low + mid)))  # 1 Hz per bin
    >>> bool(spectrum[100] < 0.1 * spectrum[1000])
    True
    """
    x8 = signal.resample_poly(np.asarray(x, dtype=np.float64), 1, 2)
    x8 = signal.sosfilt(_TELEPHONE_SOS, x8)
    peak = np.abs(x8).max()
    if peak > 0:
        x8 = x8 / peak * 0.9
    y = signal.resample_poly(_mu_law(x8), 2, 1)[: len(x)]
    if len(y) < len(x):
        y = np.pad(y, (0, len(x) - len(y)))
    return y


def augment(wav, aug, noises=(), rirs=()):
    """Applies reverberation, noise, a telephone channel and peak normalisation.

    Arguments
    ---------
    wav : numpy.ndarray
        (T,) float waveform at 16 kHz.
    aug : dict
        ``reverb`` (index into ``rirs``), ``noise`` (``[index, offset, snr_db]``),
        ``telephone`` (bool), ``floor`` (``[seed, level_db]``: a faint white-noise floor
        relative to the peak, so that no file holds digital silence) and ``peak_db``
        (target peak level in dBFS); absent keys are skipped.
    noises, rirs : sequence of numpy.ndarray
        Noise recordings and room impulse responses at 16 kHz.

    Returns
    -------
    numpy.ndarray
        (T,) float32, peak at ``10 ** (peak_db / 20)``.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> speech = np.sin(np.arange(16000) / 5.0)
    >>> noisy = augment(speech, {"noise": [0, 100, 10.0], "peak_db": -1.0},
    ...                 noises=[rng.standard_normal(8000)])
    >>> round(float(np.abs(noisy).max()), 3), noisy.dtype
    (0.891, dtype('float32'))
    """
    y = np.asarray(wav, dtype=np.float64)
    if aug.get("reverb") is not None:
        y = signal.fftconvolve(y, rirs[aug["reverb"]])[: len(y)]
    if aug.get("noise"):
        index, offset, snr = aug["noise"]
        noise = np.take(noises[index], np.arange(offset, offset + len(y)), mode="wrap")
        gain = math.sqrt(_active_power(y) / (_active_power(noise) * 10.0 ** (snr / 10.0)))
        y = y + gain * noise
    if aug.get("telephone"):
        y = telephone(y)
    peak = float(np.abs(y).max())
    if not peak > 0:
        raise ToolError("the synthesized audio is silent")
    if aug.get("floor"):
        seed, level_db = aug["floor"]
        floor = np.random.default_rng(seed).standard_normal(len(y))
        y = y + floor * (peak * 10.0 ** (level_db / 20.0))
        peak = float(np.abs(y).max())
    return (y * (10.0 ** (aug.get("peak_db", -1.0) / 20.0) / peak)).astype(np.float32)


def _write_flac(path, wav):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".part"
    sf.write(tmp, wav, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp, path)


class _Renderer:
    """Speaks planned utterances and writes their files (one per worker process)."""

    def __init__(self, noises, rirs):
        self.noises = noises
        self.rirs = rirs
        self.speaker = Speaker()

    def render(self, job):
        wav = self.speaker.speak(job["text"], job["voice"], rate=job["rate"], shift=job["shift"])
        written = []
        for out in job["outputs"]:
            try:
                y = augment(wav, out["aug"], self.noises, self.rirs)
            except ToolError:
                raise ToolError(f"{job['voice']} produced silence for {job['text']!r}") from None
            _write_flac(out["path"], y)
            written.append((out["path"], len(y)))
        return written

    def close(self):
        self.speaker.close()


_WORKER = None


def _init_worker(noises, rirs):
    global _WORKER
    _WORKER = _Renderer(noises, rirs)
    multiprocessing.util.Finalize(_WORKER, _WORKER.close, exitpriority=10)


def _render_job(job):
    return _WORKER.render(job)


def _valid_flac(path):
    try:
        info = sf.info(path)
    except Exception:  # a missing or unreadable file is simply redone
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames <= 0:
        return None
    return info.frames


def _render_all(jobs, n_jobs, noises, rirs, progress):
    """Runs the jobs whose outputs are missing; returns ``path -> frames`` of all outputs."""
    from tqdm.auto import tqdm

    frames, todo = {}, []
    for job in jobs:
        done = [_valid_flac(o["path"]) for o in job["outputs"]]
        if all(done):
            frames.update((o["path"], n) for o, n in zip(job["outputs"], done))
        else:
            todo.append(job)
    if len(todo) < len(jobs):
        logger.info("%d of %d utterances already synthesized, kept", len(jobs) - len(todo),
                    len(jobs))
    bar = tqdm(total=len(todo), desc="synthesizing", unit="utt", disable=not progress)
    try:
        if n_jobs <= 1 or len(todo) <= 1:
            renderer = _Renderer(noises, rirs)
            try:
                for job in todo:
                    frames.update(renderer.render(job))
                    bar.update()
            finally:
                renderer.close()
        else:
            ctx = multiprocessing.get_context("spawn")
            pool = ctx.Pool(min(n_jobs, len(todo)), initializer=_init_worker,
                            initargs=(noises, rirs))
            try:
                for written in pool.imap_unordered(_render_job, todo, chunksize=1):
                    frames.update(written)
                    bar.update()
                pool.close()
            except BaseException:
                pool.terminate()
                raise
            finally:
                pool.join()
    finally:
        bar.close()
    return frames


def _load_noise(noise_dir, opts, need_rirs):
    """Noise recordings and room impulse responses as float64 arrays at 16 kHz."""
    from cald_speech.data.audio import load_audio

    noise_dir = Path(noise_dir)
    noises, rirs = [], []
    if opts.noise_prob > 0:
        files = sorted(noise_dir.glob("noise*.wav"))
        if not files:
            raise DataError(noise_dir, "holds no noise*.wav files",
                            "point noise_dir (--noise-dir) at them, or set noise_prob=0")
        noises = [load_audio(f, SAMPLE_RATE)[0].double().numpy() for f in files]
    if need_rirs:
        files = sorted((noise_dir / "rir").glob("rir*.wav"))
        if not files:
            raise DataError(noise_dir / "rir", "holds no rir*.wav room impulse responses",
                            "point noise_dir (--noise-dir) at a folder with rir/rir*.wav, or "
                            "set reverb_prob=0 (far_field_prob=0 for SLURP)")
        for f in files:
            rir = load_audio(f, SAMPLE_RATE)[0].double().numpy()
            rir = rir[int(np.argmax(np.abs(rir))):]  # direct path first: no delay
            rirs.append(rir / np.abs(rir).max())
    return noises, rirs


def _draw_aug(rng, opts, noises, rirs, far_field=False, close_talk=False):
    """Random augmentation of one output file (always the same number of draws).

    ``far_field``: always reverberant, never telephone; ``close_talk``: never reverberant.
    """
    u = rng.random(3)
    noise = [int(rng.integers(1 << 30)), float(rng.random()), float(rng.uniform(*opts.snr_db))]
    rir = int(rng.integers(1 << 30))
    peak_db = float(rng.uniform(*opts.peak_db))
    floor = [int(rng.integers(1 << 31)), round(float(rng.uniform(-80.0, -60.0)), 2)]
    aug = {"peak_db": round(peak_db, 3), "floor": floor}
    if rirs and not close_talk and (far_field or u[0] < opts.reverb_prob):
        aug["reverb"] = rir % len(rirs)
    if noises and u[1] < opts.noise_prob:
        index = noise[0] % len(noises)
        aug["noise"] = [index, int(noise[1] * len(noises[index])), round(noise[2], 2)]
    if not far_field and u[2] < opts.telephone_prob:
        aug["telephone"] = True
    return aug


def _draw_rate_pitch(rng, opts):
    return round(float(rng.uniform(*opts.rate)), 4), round(float(rng.uniform(*opts.pitch)), 3)


def _draw_voices(rng, probs, count):
    """``count`` voice indices, distinct while there are enough voices."""
    if count == 1:
        return [int(rng.choice(len(probs), p=probs))]
    distinct = count <= int(np.count_nonzero(probs))
    return [int(i) for i in rng.choice(len(probs), size=count, p=probs, replace=not distinct)]


# --------------------------------------------------------------------------- #
# Corpus bookkeeping: metadata, idempotency, README.


def _read_metadata(root):
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot be read ({exc})",
                        "delete the corpus folder and synthesize it again") from None


def _write_text_atomic(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _prepare_root(root, kind, options, owned, overwrite):
    """Checks what ``root`` holds; returns the finished summary when up to date."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} is a file, not a folder; choose a folder for the corpus")
    meta = _read_metadata(root)
    if meta is None:
        present = [p for p in owned if (root / p).is_dir() and any((root / p).iterdir())]
        present += [p for p in owned if (root / p).is_file()]
        if present:
            raise ConfigError(
                f"{root} already holds {', '.join(map(str, present))} not made by cald-synth "
                "(no metadata.json); choose an empty folder"
            )
        return None
    if meta.get("corpus") != kind:
        raise ConfigError(
            f"{root} holds a {meta.get('corpus')!r} corpus, not {kind!r}; choose another folder"
        )
    if meta.get("options") != options:
        if not overwrite:
            old = meta.get("options") or {}
            diff = sorted(k for k in set(old) | set(options) if old.get(k) != options.get(k))
            raise ConfigError(
                f"{root} holds a {kind} corpus made with other options (differing: "
                f"{', '.join(diff)}); pass overwrite=True (--overwrite) to replace it, or "
                "choose another folder"
            )
        logger.warning("%s: replacing the corpus made with other options", root)
        for p in owned:
            shutil.rmtree(root / p, ignore_errors=True)
        for name in (METADATA_FILE, "README.md", UTTERANCES_FILE):
            (root / name).unlink(missing_ok=True)
        return None
    on_disk = sum(len(list((root / p).rglob("*.flac"))) for p in owned if (root / p).is_dir())
    if meta.get("complete"):
        summary = dict(meta["summary"])
        expected = sum(s["utterances"] for s in summary["splits"].values())
        if on_disk == expected:
            summary["up_to_date"] = True
            logger.info("%s: corpus up to date, nothing to do", root)
            return summary
        logger.warning("%s: %d audio files found, %d expected; completing the corpus",
                       root, on_disk, expected)
    else:
        logger.info("%s: resuming an unfinished corpus (%d audio files kept)", root, on_disk)
    for p in owned:
        for part in (root / p).rglob("*.part") if (root / p).is_dir() else ():
            part.unlink()
    return None


def _start(root, kind, options):
    """Records the options before any audio is written, so that a re-run can resume."""
    meta = {"corpus": kind, "format_version": FORMAT_VERSION, "complete": False,
            "options": options}
    _write_text_atomic(Path(root) / METADATA_FILE, json.dumps(meta, indent=2) + "\n")


def _write_utterance_table(root, jobs_list, voice_of):
    """``utterances.tsv``: every audio file with its split, speaker, voice and augmentation."""
    rows = ["file\tsplit\tspeaker\tvoice\tsource_id\trate\tpitch\treverb\tsnr_db\t"
            "telephone\tpeak_db"]
    for job in jobs_list:
        for out in job["outputs"]:
            aug, voice = out["aug"], voice_of[out["path"]]
            noise = aug.get("noise")
            rows.append("\t".join(str(x) for x in (
                os.path.relpath(out["path"], root), job["split"], voice.speaker, voice.name,
                job["sentence_id"], job["rate"], job["shift"],
                aug["reverb"] + 1 if "reverb" in aug else 0,
                noise[2] if noise else "-", int(bool(aug.get("telephone"))), aug["peak_db"],
            )))
    _write_text_atomic(Path(root) / UTTERANCES_FILE, "\n".join(rows) + "\n")


def _voice_table(voices):
    return {str(v.speaker): {**v.to_dict(), "description": v.describe()} for v in voices}


_HELDOUT_STATEMENT = (
    "Held-out-voice evaluation: the speakers (voice identities) of the {heldout} split(s) "
    "never occur in the {train} split, and no sentence of the {heldout} split(s) occurs in "
    "the {train} split (sentences are compared after normalisation). Dev and test share "
    "neither speakers nor sentences either. Sentences of the evaluation-only text files "
    "({eval}) are never in the {train} or {dev} split{eval_test}. A held-out identity may "
    "be built on the same engine voice as a training identity, with different fixed "
    "pitch/formant, tempo and tilt offsets (see the voice table)."
)


def _statement(splits, eval_file, eval_texts):
    train, dev, test = splits
    return _HELDOUT_STATEMENT.format(
        heldout=" and ".join(s for s in (dev, test) if s), train=train, dev=dev,
        eval=eval_file or "none given",
        eval_test=f"; the {test} split is built from them" if eval_texts else "",
    )


def _write_readme(root, summary, voices_by_split, extra_lines=()):
    kind = summary["corpus"]
    title = {"librispeech": "LibriSpeech", "slurp": "SLURP"}[kind]
    lines = [
        f"# Synthetic {title}-format corpus",
        "",
        f"Made by `cald-synth {kind}` (cald-speech {__version__}) with seed "
        f"{summary['seed']}: text-to-speech voices (espeak-ng, flite, festival) with per-"
        "utterance rate and pitch, noise, reverberation and telephone-channel augmentation. "
        "16 kHz mono FLAC. Not real speech.",
        "",
        "## Evaluation protocol",
        "",
        summary["heldout_statement"],
        "",
        "## Splits",
        "",
        "| split | " + ("records | " if kind == "slurp" else "") + "files | hours | speakers |",
        "|---|" + ("---|" if kind == "slurp" else "") + "---|---|---|",
    ]
    for split, s in summary["splits"].items():
        rec = f"{s['records']} | " if kind == "slurp" else ""
        lines.append(f"| {split} | {rec}{s['utterances']} | {s['hours']:.3f} | "
                     f"{len(s['speakers'])} |")
    lines += ["", "## Voices per split", ""]
    for split, voices in voices_by_split.items():
        if split not in summary["splits"]:
            continue
        lines += [f"### {split}", "", "| speaker | identity | engine voice and offsets |",
                  "|---|---|---|"]
        lines += [f"| {v.speaker} | {v.name} | {v.describe()} |" for v in voices]
        lines.append("")
    lines += [
        "## Files",
        "",
        f"`{UTTERANCES_FILE}` lists every audio file with its split, speaker id, voice "
        "identity, source sentence id, speaking-rate factor, pitch shift (semitones), room "
        "impulse response (0: none), SNR in dB (-: no noise), telephone channel (1/0) and "
        "peak level (dBFS). `metadata.json` holds this summary and the options.",
        "",
        *extra_lines,
    ]
    lines += ["## Options", "", "```json", json.dumps(summary["options"], indent=2), "```", ""]
    _write_text_atomic(Path(root) / "README.md", "\n".join(lines))


def _finish(root, kind, options, summary, voices_by_split, extra_lines=()):
    meta = {
        "corpus": kind,
        "format_version": FORMAT_VERSION,
        "made_by": f"cald-speech {__version__}",
        "complete": True,
        "options": options,
        "summary": summary,
        "voices": {split: _voice_table(v) for split, v in voices_by_split.items()
                   if split in summary["splits"]},
    }
    _write_readme(root, summary, voices_by_split, extra_lines)
    _write_text_atomic(Path(root) / METADATA_FILE, json.dumps(meta, indent=2) + "\n")
    summary = dict(summary)
    summary["up_to_date"] = False
    return summary


def _split_summary(paths, frames, voices_of_path):
    speakers = sorted({voices_of_path[p].speaker for p in paths})
    names = sorted({voices_of_path[p].name for p in paths})
    engines = Counter(voices_of_path[p].engine for p in paths)
    return {
        "utterances": len(paths),
        "hours": round(sum(frames[p] for p in paths) / SAMPLE_RATE / 3600.0, 5),
        "speakers": speakers,
        "voices": names,
        "engines": dict(sorted(engines.items())),
    }


def format_summary(summary):
    """A table of the splits of a corpus summary: files, hours, speakers, engines.

    Example
    -------
    >>> print(format_summary({"corpus": "librispeech", "root": "/c", "seed": 1,
    ...     "splits": {"dev-clean": {"utterances": 3, "hours": 0.002, "speakers": [7, 9],
    ...                              "engines": {"flite": 3}}}}))
    librispeech corpus in /c (seed 1)
      split            files    hours  speakers  engines
      dev-clean            3    0.002         2  flite 3
      total                3    0.002         2
    """
    lines = [f"{summary['corpus']} corpus in {summary['root']} (seed {summary['seed']})",
             f"  {'split':<15}{'files':>6}{'hours':>9}{'speakers':>10}  engines"]
    total_n, total_h, speakers = 0, 0.0, set()
    for split, s in summary["splits"].items():
        engines = ", ".join(f"{e} {n}" for e, n in s.get("engines", {}).items())
        lines.append(f"  {split:<15}{s['utterances']:>6}{s['hours']:>9.3f}"
                     f"{len(s['speakers']):>10}  {engines}")
        total_n += s["utterances"]
        total_h += s["hours"]
        speakers |= set(s["speakers"])
    lines.append(f"  {'total':<15}{total_n:>6}{total_h:>9.3f}{len(speakers):>10}")
    return "\n".join(lines)


def _check_counts(counts, n_jobs):
    for split, n in counts.items():
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"number of utterances for {split!r} must be an integer >= 0, "
                              f"got {n!r}")
    if sum(counts.values()) == 0:
        raise ConfigError("nothing to synthesize: every split has 0 utterances")
    if not isinstance(n_jobs, int) or n_jobs < 1:
        raise ConfigError(f"jobs={n_jobs!r} must be an integer >= 1")


def _take(pool, n, split, source, hint):
    if n > len(pool):
        raise ConfigError(
            f"{split}: {n} sentences requested but only {len(pool)} usable ones are left in "
            f"{source}; {hint}"
        )
    return pool[:n]


def _choose_texts(pool, eval_items, counts, split_names, opts, eval_rng_tag, source,
                  eval_source, unit, train_hint=None):
    """Test, dev and train texts from a shuffled ``pool`` of (item, words).

    Test comes first from the pool, or, with ``opts.eval_texts``, from ``eval_items``
    ((item, raw text) pairs: normalised, filtered, deduplicated and shuffled here).
    """
    n_train, n_dev, n_test = counts
    train, dev, test = split_names
    hint = f"ask for fewer {unit}"
    chosen = {}
    if opts.eval_texts:
        eval_pool, eval_seen = [], set()
        for item, text in eval_items:
            words = normalize_text(text)
            if words and words not in eval_seen and _keep_sentence(words, opts):
                eval_seen.add(words)
                eval_pool.append((item, words))
        order = np.random.default_rng([opts.seed, eval_rng_tag]).permutation(len(eval_pool))
        eval_pool = [eval_pool[i] for i in order]
        chosen[test] = _take(eval_pool, n_test, test, eval_source, f"ask for fewer test {unit}")
    else:
        chosen[test] = _take(pool, n_test, test, source, hint)
        pool = pool[n_test:]
    chosen[dev] = _take(pool, n_dev, dev, source, hint)
    chosen[train] = _take(pool[n_dev:], n_train, train, source,
                          f"{hint} ({train_hint})" if train_hint else hint)
    return chosen


# --------------------------------------------------------------------------- #
# LibriSpeech.


def synthesize_librispeech(
    root,
    n_train=800,
    n_dev=100,
    n_test=100,
    *,
    jobs=1,
    text_file=None,
    eval_text_file=None,
    noise_dir=None,
    data_dir=None,
    split_names=LIBRISPEECH_SPLITS,
    overwrite=False,
    progress=True,
    **options,
):
    """Synthesizes a corpus in the real LibriSpeech layout under ``root/LibriSpeech``.

    Arguments
    ---------
    root : str
        Corpus folder; gets ``LibriSpeech/<split>/...``, ``README.md`` and
        ``metadata.json``.
    n_train, n_dev, n_test : int
        Utterances per split (each a distinct sentence); 0 leaves a split out.
    jobs : int
        Worker processes (the output does not depend on it).
    text_file : str, optional
        ``ID<TAB>sentence`` lines (default: ``text/ljspeech_sentences.tsv`` of
        :func:`default_data_dir`).
    eval_text_file : str, optional
        Evaluation-only sentences, never put in train or dev (default:
        ``eval/text/lj_heldout.tsv``; a missing default file is skipped with a warning).
    noise_dir : str, optional
        Folder with ``noise*.wav`` and ``rir/rir*.wav`` (default: ``noise/``).
    data_dir : str, optional
        Folder the defaults above are taken from (default: :func:`default_data_dir`).
    split_names : (str, str, str)
        Names of the train, dev and test split folders.
    overwrite : bool
        Replace a corpus made with other options (otherwise that is an error).
    progress : bool
        Show a progress bar.
    **options
        Any field of :class:`SynthOptions` (seed, voices, engines, noise_prob, ...).

    Returns
    -------
    dict
        ``corpus``, ``root``, ``seed``, ``options``, ``heldout_statement``, ``up_to_date``
        and ``splits``: per split ``utterances``, ``hours``, ``speakers``, ``voices``,
        ``engines``.

    Raises
    ------
    ConfigError
        Bad counts or options, unknown engine or voice, too few sentences or voices,
        or a folder holding something else.
    DataError
        A missing or unreadable text file, or one without usable sentences.
    ToolError
        A missing program or festival voice (the message names the apt package).
    """
    opts = SynthOptions.from_kwargs(options)
    train, dev, test = split_names = tuple(split_names)
    if len(set(split_names)) != 3 or not all(split_names):
        raise ConfigError(f"split_names={split_names!r} must be three distinct names")
    counts = {train: n_train, dev: n_dev, test: n_test}
    _check_counts(counts, jobs)
    data = Path(data_dir) if data_dir else default_data_dir()
    text_file = Path(text_file or data / "text" / "ljspeech_sentences.tsv")
    eval_given = eval_text_file is not None
    eval_text_file = Path(eval_text_file or data / "eval" / "text" / "lj_heldout.tsv")
    noise_dir = Path(noise_dir or data / "noise")
    root = Path(root).resolve()

    sentences = _read_tsv_sentences(text_file)
    if eval_given or opts.eval_texts or eval_text_file.is_file():
        eval_sentences = _read_tsv_sentences(eval_text_file)
    else:
        logger.warning("%s not found: no evaluation-only sentences to keep out of train",
                       eval_text_file)
        eval_sentences, eval_text_file = [], None
    voices = _resolve_voices(opts)
    record = {
        **asdict(opts),
        "counts": counts,
        "split_names": list(split_names),
        "text_file": str(text_file),
        "eval_text_file": str(eval_text_file) if eval_text_file else None,
        "text_digest": _file_digest([text_file, eval_text_file]),
        "noise_dir": str(noise_dir),
        "voice_names": [v.name for v in voices],
        "format_version": FORMAT_VERSION,
    }
    record = json.loads(json.dumps(record))
    done = _prepare_root(root, "librispeech", record, ["LibriSpeech"], overwrite)
    if done is not None:
        return done

    # Sentence pools: unique after normalisation; evaluation-only ones kept apart.
    eval_ids = {sid for sid, _ in eval_sentences}
    eval_words = {normalize_text(t) for _, t in eval_sentences}
    pool, seen = [], set()
    for sid, text in sentences:
        words = normalize_text(text)
        if not words or words in seen or sid in eval_ids or words in eval_words:
            continue
        seen.add(words)
        if _keep_sentence(words, opts):
            pool.append((sid, words))
    if not pool:
        raise DataError(text_file, "holds no usable sentence (after normalisation and the "
                        f"{opts.min_words}-{opts.max_words} word limits)",
                        "use a file of 'ID<TAB>sentence' lines, or relax min/max_words")
    rng = np.random.default_rng([opts.seed, 11])
    pool = [pool[i] for i in rng.permutation(len(pool))]
    chosen = _choose_texts(
        pool, eval_sentences, (n_train, n_dev, n_test), split_names, opts, eval_rng_tag=12,
        source=text_file, eval_source=eval_text_file, unit="utterances",
    )

    voices_by_split = _split_voices(opts, voices, split_names, counts)
    need_rirs = opts.reverb_prob > 0
    noises, rirs = _load_noise(noise_dir, opts, need_rirs)
    base = root / "LibriSpeech"
    jobs_list, trans, voice_of = [], {}, {}
    for split_code, split in enumerate(split_names):
        if not counts[split]:
            continue
        split_voices = voices_by_split[split]
        probs = voice_weights(split_voices, opts.engine_weights)
        drawn = []
        for i, (sid, words) in enumerate(chosen[split]):
            urng = np.random.default_rng([opts.seed, 1, split_code, i])
            idx = _draw_voices(urng, probs, 1)[0]
            rate, shift = _draw_rate_pitch(urng, opts)
            aug = _draw_aug(urng, opts, noises, rirs)
            drawn.append((split_voices[idx], sid, words, rate, shift, aug))
        per_speaker = Counter()
        for voice, sid, words, rate, shift, aug in drawn:
            k = per_speaker[voice.speaker]
            per_speaker[voice.speaker] += 1
            chapter = voice.speaker * 100 + k // CHAPTER_SIZE + 1
            utt_id = f"{voice.speaker}-{chapter}-{k % CHAPTER_SIZE:04d}"
            folder = base / split / str(voice.speaker) / str(chapter)
            path = str(folder / f"{utt_id}.flac")
            trans.setdefault(folder / f"{voice.speaker}-{chapter}.trans.txt", []).append(
                f"{utt_id} {words}")
            voice_of[path] = voice
            jobs_list.append({"text": words.lower(), "voice": voice.name, "rate": rate,
                              "shift": shift, "outputs": [{"path": path, "aug": aug}],
                              "split": split, "sentence_id": sid})

    _start(root, "librispeech", record)
    frames = _render_all(jobs_list, jobs, noises, rirs, progress)
    for path, lines in trans.items():
        _write_text_atomic(path, "\n".join(lines) + "\n")
    _write_speakers_chapters(base, jobs_list, voice_of, frames)
    _write_utterance_table(root, jobs_list, voice_of)

    summary = {
        "corpus": "librispeech",
        "root": str(root),
        "seed": opts.seed,
        "options": record,
        "heldout_statement": _statement(split_names, eval_text_file, opts.eval_texts),
        "splits": {},
    }
    for split in split_names:
        paths = [j["outputs"][0]["path"] for j in jobs_list if j["split"] == split]
        if paths:
            summary["splits"][split] = _split_summary(paths, frames, voice_of)
    return _finish(root, "librispeech", record, summary, voices_by_split)


def _write_speakers_chapters(base, jobs_list, voice_of, frames):
    minutes, chapters = Counter(), Counter()
    split_of, chapter_info = {}, {}
    for job in jobs_list:
        path = job["outputs"][0]["path"]
        v = voice_of[path]
        chapter = int(Path(path).parent.name)
        minutes[v.speaker] += frames[path] / SAMPLE_RATE / 60.0
        chapters[chapter] += frames[path] / SAMPLE_RATE / 60.0
        split_of[v.speaker] = job["split"]
        chapter_info[chapter] = (v, job["split"])
    spk = [
        "; Synthetic speakers: one voice identity each (see README.md in the corpus root)",
        ";ID  |SEX| SUBSET           |MINUTES| NAME",
    ]
    for speaker in sorted(minutes):
        v = next(x for x in voice_of.values() if x.speaker == speaker)
        spk.append(f"{speaker:<5}| {v.sex} | {split_of[speaker]:<17}| {minutes[speaker]:5.2f} | "
                   f"{v.name}")
    chap = [";ID    |READER|MINUTES| SUBSET           | PROJ.|BOOK ID| CH. TITLE | PROJECT TITLE"]
    for chapter in sorted(chapters):
        v, split = chapter_info[chapter]
        chap.append(f"{chapter:<7}|{v.speaker:<6}| {chapters[chapter]:5.2f} | {split:<17}| "
                    f"0    | 0     | synthetic | synthetic speech ({v.name})")
    _write_text_atomic(base / "SPEAKERS.TXT", "\n".join(spk) + "\n")
    _write_text_atomic(base / "CHAPTERS.TXT", "\n".join(chap) + "\n")


# --------------------------------------------------------------------------- #
# SLURP.


def synthesize_slurp(
    root,
    n_train=1000,
    n_dev=200,
    n_test=200,
    *,
    jobs=1,
    slurp_files=None,
    eval_slurp_file=None,
    noise_dir=None,
    data_dir=None,
    recordings_per_record=1,
    far_field_prob=0.3,
    overwrite=False,
    progress=True,
    **options,
):
    """Synthesizes a corpus in the real SLURP layout.

    Writes ``root/dataset/slurp/{train,devel,test}.jsonl`` (SLURP records, their
    ``recordings`` replaced by the synthesized files) and ``root/slurp_real/`` audio:
    ``audio-<id>-headset.flac`` for every recording and, for a share
    ``far_field_prob`` of them, a far-field twin ``audio-<id>.flac`` (the same speech,
    reverberant). Headset recordings are close-talk: never reverberant (``reverb_prob``
    does not apply); noise and the telephone channel apply as configured, and far-field
    twins get their own noise draw. ``root/utterances.tsv`` gives the speaker, voice and
    augmentation of every file.

    Arguments
    ---------
    root : str
        Corpus folder.
    n_train, n_dev, n_test : int
        Records (distinct sentences) per split; 0 leaves a split out.
    jobs : int
        Worker processes (the output does not depend on it).
    slurp_files : list of str, optional
        SLURP ``.jsonl`` annotation files the sentences come from (default:
        ``text/slurp_devel.jsonl`` and ``text/slurp_test.jsonl``).
    eval_slurp_file : str, optional
        Evaluation-only records, never in train or devel (default:
        ``eval/text/slurp_heldout.jsonl``).
    noise_dir : str, optional
        Folder with ``noise*.wav`` and ``rir/rir*.wav``.
    data_dir : str, optional
        Folder the defaults above are taken from (default: :func:`default_data_dir`).
    recordings_per_record : int
        Recordings (each by a different voice where possible) per record, 1 to 10.
    far_field_prob : float
        Share of recordings that also get a far-field twin.
    overwrite, progress : bool
        As in :func:`synthesize_librispeech`.
    **options
        Any field of :class:`SynthOptions`.

    Returns
    -------
    dict
        As :func:`synthesize_librispeech`; per split also ``records``, ``headset`` and
        ``far_field`` counts.

    Example
    -------
    >>> import json, os, tempfile
    >>> out = tempfile.mkdtemp()
    >>> s = synthesize_slurp(out, n_train=2, n_dev=0, n_test=1, seed=1, engines=["flite"],
    ...                      far_field_prob=1.0, progress=False)
    >>> s["splits"]["train"]["records"], s["splits"]["train"]["utterances"]
    (2, 4)
    >>> rec = json.loads(open(os.path.join(out, "dataset", "slurp", "test.jsonl")).readline())
    >>> [r["file"].endswith("-headset.flac") for r in rec["recordings"]]
    [True, False]
    >>> import shutil; shutil.rmtree(out)
    """
    opts = SynthOptions.from_kwargs(options)
    split_names = SLURP_SPLITS
    train, dev, test = split_names
    counts = {train: n_train, dev: n_dev, test: n_test}
    _check_counts(counts, jobs)
    if not isinstance(recordings_per_record, int) or not 1 <= recordings_per_record <= 10:
        raise ConfigError(f"recordings_per_record={recordings_per_record!r} must be 1 to 10")
    if not 0.0 <= far_field_prob <= 1.0:
        raise ConfigError(f"far_field_prob={far_field_prob!r} must lie in [0, 1]")
    data = Path(data_dir) if data_dir else default_data_dir()
    if slurp_files is None:
        slurp_files = [data / "text" / "slurp_devel.jsonl", data / "text" / "slurp_test.jsonl"]
    elif isinstance(slurp_files, (str, os.PathLike)):
        slurp_files = [slurp_files]
    slurp_files = [Path(p) for p in slurp_files]
    eval_given = eval_slurp_file is not None
    eval_slurp_file = Path(eval_slurp_file or data / "eval" / "text" / "slurp_heldout.jsonl")
    noise_dir = Path(noise_dir or data / "noise")
    root = Path(root).resolve()

    records = [rec for p in slurp_files for rec in _read_slurp_records(p)]
    if eval_given or opts.eval_texts or eval_slurp_file.is_file():
        eval_records = _read_slurp_records(eval_slurp_file)
    else:
        logger.warning("%s not found: no evaluation-only records to keep out of train",
                       eval_slurp_file)
        eval_records, eval_slurp_file = [], None
    voices = _resolve_voices(opts)
    record = {
        **asdict(opts),
        "counts": counts,
        "recordings_per_record": recordings_per_record,
        "far_field_prob": far_field_prob,
        "slurp_files": [str(p) for p in slurp_files],
        "eval_slurp_file": str(eval_slurp_file) if eval_slurp_file else None,
        "text_digest": _file_digest([*slurp_files, eval_slurp_file]),
        "noise_dir": str(noise_dir),
        "voice_names": [v.name for v in voices],
        "format_version": FORMAT_VERSION,
    }
    record = json.loads(json.dumps(record))
    done = _prepare_root(root, "slurp", record, ["dataset", "slurp_real"], overwrite)
    if done is not None:
        return done

    eval_ids = {r["slurp_id"] for r in eval_records}
    eval_words = {normalize_text(r["sentence"]) for r in eval_records}
    pool, seen = [], set()
    for rec in records:
        words = normalize_text(rec["sentence"])
        if not words or words in seen or rec["slurp_id"] in eval_ids or words in eval_words:
            continue
        seen.add(words)
        if _keep_sentence(words, opts):
            pool.append((rec, words))
    if not pool:
        raise DataError(slurp_files[0], "holds no usable SLURP sentence",
                        "use SLURP annotation .jsonl files")
    pool = [pool[i] for i in np.random.default_rng([opts.seed, 21]).permutation(len(pool))]
    source = ", ".join(map(str, slurp_files))
    chosen = _choose_texts(
        pool, [(rec, rec["sentence"]) for rec in eval_records], (n_train, n_dev, n_test),
        split_names, opts, eval_rng_tag=22, source=source, eval_source=eval_slurp_file,
        unit="records", train_hint="more recordings_per_record gives more audio",
    )

    voices_by_split = _split_voices(opts, voices, split_names, counts)
    noises, rirs = _load_noise(noise_dir, opts, far_field_prob > 0)
    audio_dir = root / "slurp_real"
    jobs_list, jsonl, voice_of = [], {}, {}
    for split_code, split in enumerate(split_names):
        if not counts[split]:
            continue
        split_voices = voices_by_split[split]
        probs = voice_weights(split_voices, opts.engine_weights)
        out_records = []
        for i, (rec, words) in enumerate(chosen[split]):
            urng = np.random.default_rng([opts.seed, 2, split_code, i])
            picks = _draw_voices(urng, probs, recordings_per_record)
            entries = []
            for k, idx in enumerate(picks):
                voice = split_voices[idx]
                rate, shift = _draw_rate_pitch(urng, opts)
                twin = bool(urng.random() < far_field_prob)
                headset_aug = _draw_aug(urng, opts, noises, rirs, close_talk=True)
                far_aug = _draw_aug(urng, opts, noises, rirs, far_field=True)
                rec_id = 1600000000 + split_code * 10_000_000 + i * 10 + k
                outputs = [("headset", f"audio-{rec_id}-headset.flac", headset_aug)]
                if twin:
                    outputs.append(("far_field", f"audio-{rec_id}.flac", far_aug))
                for _, name, _ in outputs:
                    entries.append({"file": name, "wer": 0.0,
                                    "ent_wer": 0.0 if rec.get("entities") else None,
                                    "status": "correct"})
                    voice_of[str(audio_dir / name)] = voice
                jobs_list.append({
                    "text": words.lower(), "voice": voice.name, "rate": rate, "shift": shift,
                    "outputs": [{"path": str(audio_dir / name), "aug": aug}
                                for _, name, aug in outputs],
                    "split": split, "sentence_id": rec["slurp_id"],
                })
            out_records.append({**rec, "recordings": entries})
        jsonl[split] = out_records

    _start(root, "slurp", record)
    frames = _render_all(jobs_list, jobs, noises, rirs, progress)
    ann = root / "dataset" / "slurp"
    for split, recs in jsonl.items():
        _write_text_atomic(ann / f"{split}.jsonl",
                           "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    _write_utterance_table(root, jobs_list, voice_of)

    summary = {
        "corpus": "slurp",
        "root": str(root),
        "seed": opts.seed,
        "options": record,
        "heldout_statement": _statement(split_names, eval_slurp_file, opts.eval_texts),
        "splits": {},
    }
    for split in split_names:
        split_jobs = [j for j in jobs_list if j["split"] == split]
        paths = [o["path"] for j in split_jobs for o in j["outputs"]]
        if not paths:
            continue
        s = _split_summary(paths, frames, voice_of)
        s["records"] = len(jsonl[split])
        s["headset"] = sum(p.endswith("-headset.flac") for p in paths)
        s["far_field"] = len(paths) - s["headset"]
        summary["splits"][split] = s
    extra = ["Far-field files (`audio-<id>.flac`) are reverberant twins of the headset file "
             "`audio-<id>-headset.flac`: the same synthesized speech.", ""]
    return _finish(root, "slurp", record, summary, voices_by_split, extra)


# --------------------------------------------------------------------------- #
# Command line.


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones and those the help text already gives."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _common_arguments(p, n_train, n_dev, n_test):
    d = SynthOptions()
    p.add_argument("out", help="corpus folder")
    p.add_argument("--train", type=int, default=n_train, help="train size")
    p.add_argument("--dev", type=int, default=n_dev, help="dev size (0: no dev split)")
    p.add_argument("--test", type=int, default=n_test, help="test size (0: no test split)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every random choice")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes (the output does not depend on it)")
    p.add_argument("--voices", default=None,
                   help="comma-separated identities, engine:voice or engines (default: all "
                        "installed; see `cald-synth voices`)")
    p.add_argument("--engines", default=None, help="comma-separated: espeak,flite,festival")
    p.add_argument("--dev-voices", type=int, default=d.dev_voices,
                   help="identities held out for the dev split")
    p.add_argument("--test-voices", type=int, default=d.test_voices,
                   help="identities held out for the test split")
    p.add_argument("--eval-texts", action="store_true",
                   help="build the test split from the evaluation-only sentences")
    p.add_argument("--data-dir", default=None,
                   help="shared data folder with text/, eval/text/ and noise/ (default: "
                        "$CALD_SPEECH_DATA or ../shared/data)")
    p.add_argument("--noise-dir", default=None,
                   help="folder with noise*.wav and rir/rir*.wav (default: DATA_DIR/noise)")
    p.add_argument("--noise-prob", type=float, default=d.noise_prob,
                   help="share of files with additive noise")
    p.add_argument("--snr", type=float, nargs=2, default=d.snr_db, metavar=("LOW", "HIGH"),
                   help="SNR range in dB")
    p.add_argument("--reverb-prob", type=float, default=d.reverb_prob,
                   help="share of files with room reverberation (SLURP: never for headset "
                        "files, always for far-field twins)")
    p.add_argument("--telephone-prob", type=float, default=d.telephone_prob,
                   help="share of files through a telephone channel")
    p.add_argument("--rate", type=float, nargs=2, default=d.rate, metavar=("LOW", "HIGH"),
                   help="speaking-rate factor range")
    p.add_argument("--pitch", type=float, nargs=2, default=d.pitch, metavar=("LOW", "HIGH"),
                   help="pitch shift range in semitones")
    p.add_argument("--min-words", type=int, default=d.min_words,
                   help="drop shorter sentences")
    p.add_argument("--max-words", type=int, default=d.max_words,
                   help="drop longer sentences")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help="drop sentences estimated to last longer")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a corpus made with other options")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _options_from_args(args):
    return {
        "seed": args.seed, "voices": args.voices, "engines": args.engines,
        "dev_voices": args.dev_voices, "test_voices": args.test_voices,
        "eval_texts": args.eval_texts, "noise_prob": args.noise_prob,
        "snr_db": tuple(args.snr), "reverb_prob": args.reverb_prob,
        "telephone_prob": args.telephone_prob, "rate": tuple(args.rate),
        "pitch": tuple(args.pitch), "min_words": args.min_words, "max_words": args.max_words,
        "max_seconds": args.max_seconds,
    }


def build_parser():
    """The ``cald-synth`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="cald-synth",
        description="Synthesize offline speech corpora in the real LibriSpeech and SLURP "
                    "layouts (held-out voices and sentences for dev/test).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = {"formatter_class": _HelpFormatter}
    p = sub.add_parser("librispeech", help="OUT/LibriSpeech/<split>/<spk>/<chapter>/...", **fmt)
    _common_arguments(p, 800, 100, 100)
    p.add_argument("--text", default=None, help="ID<TAB>sentence file (default: LJ Speech)")
    p.add_argument("--eval-text", default=None, help="evaluation-only sentences")
    p.add_argument("--split-names", nargs=3, default=list(LIBRISPEECH_SPLITS),
                   metavar=("TRAIN", "DEV", "TEST"))
    p = sub.add_parser("slurp", help="OUT/dataset/slurp/*.jsonl + OUT/slurp_real/*.flac", **fmt)
    _common_arguments(p, 1000, 200, 200)
    p.add_argument("--slurp-text", nargs="+", default=None,
                   help="SLURP .jsonl files the sentences come from")
    p.add_argument("--eval-text", default=None, help="evaluation-only SLURP records (.jsonl)")
    p.add_argument("--recordings-per-record", type=int, default=1,
                   help="recordings (different voices) per record")
    p.add_argument("--far-field-prob", type=float, default=0.3,
                   help="share of recordings that also get a far-field twin")
    p = sub.add_parser("voices", help="list the voice identities")
    p.add_argument("--available", action="store_true", help="only those installed here")
    return parser


def main(argv=None):
    """Entry point of ``cald-synth``; returns the exit status.

    Example
    -------
    >>> main(["librispeech", "/nonexistent/out", "--engines", "bogus"])
    1
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.time()
    try:
        if args.command == "voices":
            for v in list_voices(available_only=args.available):
                print(f"{v.speaker}  {v.name:<36} {v.sex}  {v.describe()}")
            return 0
        common = {"jobs": args.jobs, "noise_dir": args.noise_dir, "data_dir": args.data_dir,
                  "overwrite": args.overwrite,
                  "progress": not args.quiet, **_options_from_args(args)}
        if args.command == "librispeech":
            summary = synthesize_librispeech(
                args.out, args.train, args.dev, args.test, text_file=args.text,
                eval_text_file=args.eval_text, split_names=args.split_names, **common)
        else:
            summary = synthesize_slurp(
                args.out, args.train, args.dev, args.test, slurp_files=args.slurp_text,
                eval_slurp_file=args.eval_text,
                recordings_per_record=args.recordings_per_record,
                far_field_prob=args.far_field_prob, **common)
    except CaldError as exc:
        print(f"cald-synth: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. no permission to write the corpus folder, disk full
        print(f"cald-synth: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cald-synth: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(format_summary(summary))
    state = "already up to date" if summary.get("up_to_date") else "done"
    print(f"{state} in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
