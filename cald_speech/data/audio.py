"""Reading audio files robustly: any rate, channel count and soundfile format.

Example
-------
>>> import tempfile, os, numpy as np, soundfile as sf
>>> d = tempfile.mkdtemp()
>>> path = os.path.join(d, "a.wav")
>>> sf.write(path, np.zeros((8000, 2), dtype="float32") + 0.1, 8000)
>>> wav, sr = load_audio(path, target_sr=16000)
>>> tuple(wav.shape), sr
((16000,), 8000)
>>> audio_duration(path)
1.0
"""

import os

import numpy as np
import soundfile as sf
import torch

from cald_speech.errors import AudioError

#: Sample rate every model in this package consumes.
SAMPLE_RATE = 16000


def _check_file(path):
    if not os.path.exists(path):
        raise AudioError(path, "file not found", "check the path or regenerate the manifest")
    if os.path.isdir(path):
        raise AudioError(path, "is a directory, not an audio file", "pass the audio file itself")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "file is empty (0 bytes)", "remove it or re-create it")


def audio_info(path):
    """Returns (sample_rate, frames, channels) of an audio file, with clear errors.

    Arguments
    ---------
    path : str
        Audio file in any format libsndfile reads (wav, flac, ogg, ...).

    Returns
    -------
    tuple
        (sample_rate, frames, channels)
    """
    path = str(path)
    _check_file(path)
    try:
        info = sf.info(path)
    except Exception as exc:  # libsndfile raises its own error types
        raise AudioError(
            path, f"not a readable audio file ({exc})", "convert it to wav or flac, e.g. with sox"
        ) from None
    if info.frames <= 0:
        raise AudioError(path, "contains no audio samples", "remove it from the corpus")
    return info.samplerate, info.frames, info.channels


def audio_duration(path):
    """Duration in seconds of an audio file (reads the header only)."""
    sr, frames, _ = audio_info(path)
    return frames / sr


def resample(wav, orig_sr, target_sr=SAMPLE_RATE):
    """Resamples a 1-D or (..., T) tensor with torchaudio's band-limited resampler."""
    if orig_sr == target_sr:
        return wav
    import torchaudio.functional as AF

    return AF.resample(wav, orig_sr, target_sr)


def check_finite(path, samples, offset=0):
    """Raises :class:`AudioError` when ``samples`` hold a NaN or an infinity.

    ``samples`` is (frames,) or (frames, channels), starting at frame ``offset`` of the
    file. A float WAV can store them; a model fed one returns garbage (or an empty text), and
    one NaN in a training batch poisons every later update.

    Example
    -------
    >>> check_finite("a.wav", np.array([0.0, np.nan, 0.1], dtype="float32"))
    Traceback (most recent call last):
      ...
    cald_speech.errors.AudioError: a.wav: holds 1 non-finite sample(s) (NaN or Inf), ...at sample 1 ...
    """
    bad = ~np.isfinite(np.asarray(samples))
    if bad.any():
        first = offset + int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
        raise AudioError(
            path, f"holds {int(bad.sum())} non-finite sample(s) (NaN or Inf), the first at "
            f"sample {first}", "re-export the recording from its source, or leave it "
            "out of the manifest")


def load_audio(path, target_sr=SAMPLE_RATE, start=0, stop=None):
    """Loads an audio file as a mono float32 tensor at ``target_sr``.

    Multi-channel audio is averaged to mono; other rates are resampled.

    Arguments
    ---------
    path : str
        Audio file.
    target_sr : int or None
        Output rate; ``None`` keeps the file's own rate.
    start, stop : int
        Frame range to read, in the file's own rate (for long files).

    Returns
    -------
    wav : torch.Tensor
        (T,) float32 waveform.
    orig_sr : int
        The file's own sample rate.
    """
    path = str(path)
    orig_sr, frames, _ = audio_info(path)
    try:
        data, _ = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(
            path, f"could not decode audio ({exc}); the file may be truncated", "re-create it"
        ) from None
    if data.size == 0:
        raise AudioError(path, "contains no audio samples", "remove it from the corpus")
    check_finite(path, data)
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if target_sr is not None and orig_sr != target_sr:
        wav = resample(wav, orig_sr, target_sr)
    return wav, orig_sr
