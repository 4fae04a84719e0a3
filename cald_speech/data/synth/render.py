"""Augmentation and rendering of the synthesizer's utterances.

Each planned utterance (a *job*: text, voice identity, rate, pitch and one or more
output files with their augmentation) is spoken once by
:class:`cald_speech.data.voices.Speaker` and written as 16 kHz mono FLAC, after
reverberation, additive noise, a telephone channel and peak normalisation
(:func:`augment`). Jobs run in this process or in spawned worker processes; the random
draws that plan them (:func:`_draw_aug`, :func:`_draw_rate_pitch`, :func:`_draw_voices`)
happen beforehand, so the audio does not depend on the number of workers.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> from cald_speech.data.synth.options import SynthOptions
>>> aug = _draw_aug(rng, SynthOptions(noise_prob=0.0), noises=[], rirs=[], close_talk=True)
>>> sorted(aug)[:2]
['floor', 'peak_db']
"""

import logging
import math
import multiprocessing
import multiprocessing.util
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from cald_speech.data.voices import SAMPLE_RATE, Speaker
from cald_speech.errors import DataError, ToolError

logger = logging.getLogger(__name__)

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
