"""Options of the corpus synthesizer and the voice identities each split gets.

:class:`SynthOptions` holds every option a corpus records in ``metadata.json``;
:func:`default_data_dir` finds the shared offline data (sentence lists, noise). Voices are
split so that the dev and test splits hear identities that never occur in train
(:func:`assign_voices`, :func:`voice_split`), and each split samples its voices with the
engine weights of the options (:func:`voice_weights`).

Example
-------
>>> opts = SynthOptions(seed=2, voices="flite-kal,flite-slt")
>>> opts.voices, opts.rate
(['flite-kal', 'flite-slt'], (0.88, 1.12))
"""

import logging
import os
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from cald_speech.data.voices import ENGINES, available, check_tools, select_voices
from cald_speech.errors import ConfigError

logger = logging.getLogger(__name__)

#: Default split names of the LibriSpeech corpus (those of the real corpus).
LIBRISPEECH_SPLITS = ("train-clean-100", "dev-clean", "test-clean")
#: Split names of the SLURP corpus (its annotation files).
SLURP_SPLITS = ("train", "devel", "test")


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
    beside_repo = Path(__file__).resolve().parents[4] / "shared" / "data"
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
