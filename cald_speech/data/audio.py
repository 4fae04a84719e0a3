"""Reading audio files robustly: any rate, channel count and soundfile format.

:func:`load_audio` is the one reader of the package (training pipelines, data
preparation, inference): it reads in blocks, downmixes each block to mono, checks that
every sample is finite and resamples; :func:`audio_info` reads the header and refuses
missing, empty, non-audio and truncated files. Every error is an
:class:`~cald_speech.errors.AudioError` naming the file and the fix.

Example
-------
>>> import tempfile, os, numpy as np, soundfile as sf
>>> d = tempfile.mkdtemp()
>>> path = os.path.join(d, "a.wav")
>>> sf.write(path, np.zeros((8000, 2), dtype="float32") + 0.1, 8000)
>>> wav, info = load_audio(path, target_sr=16000)
>>> tuple(wav.shape), info["sample_rate"], info["channels"]
((16000,), 8000, 2)
>>> audio_info(path)            # (rate, frames, channels), from the header
(8000, 8000, 2)
"""

import os
import struct

import numpy as np
import soundfile as sf
import torch

from cald_speech.errors import AudioError

#: Sample rate every model in this package consumes.
SAMPLE_RATE = 16000
#: Frames read from a file at a time.
READ_BLOCK = 1 << 20


def _check_file(path):
    if not os.path.exists(path):
        raise AudioError(path, "file not found", "check the path or regenerate the manifest")
    if os.path.isdir(path):
        raise AudioError(path, "is a directory, not an audio file", "pass the audio file itself")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "file is empty (0 bytes)", "remove it or re-create it")


def _wav_truncation(path):
    """(declared, present) data bytes of a RIFF/WAVE file whose data chunk is cut short."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos = 12
            while pos + 8 <= size:
                fh.seek(pos)
                cid, length = struct.unpack("<4sI", fh.read(8))
                if cid == b"data":
                    present = size - pos - 8
                    # 0 and 0xFFFFFFFF-ish sizes mean "unknown" (streamed writers)
                    if 0 < length < 0xFFFFFF00 and present < length:
                        return length, present
                    return None
                pos += 8 + length + (length & 1)
    except OSError:
        return None
    return None


def _check_complete(path):
    """Raises :class:`AudioError` when a WAV file's data chunk is shorter than its header says.

    libsndfile reads such a file without complaint (its frame count comes from the
    bytes present), so the cut would go unnoticed.
    """
    cut = _wav_truncation(path)
    if cut is not None:
        declared, present = cut
        raise AudioError(
            path, f"truncated: the header announces {declared} bytes of audio but only "
            f"{present} are present", "re-create or re-download it, or rewrite its header "
            "(e.g. sox in.wav fixed.wav) to keep the part that is there",
        )


def audio_info(path):
    """Returns (sample_rate, frames, channels) of an audio file, with clear errors.

    Reads the header only. A WAV file whose data chunk is shorter than its header
    announces (a cut download or copy) is refused here, before any decoding.

    Arguments
    ---------
    path : str
        Audio file in any format libsndfile reads (wav, flac, ogg, ...).

    Returns
    -------
    tuple
        (sample_rate, frames, channels)

    Raises
    ------
    AudioError
        Missing, a directory, empty, not audio, no samples, or a truncated WAV file.

    Example
    -------
    >>> import os, tempfile, numpy as np, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "cut.wav")
    >>> sf.write(path, np.zeros(1000, dtype="float32"), 16000, subtype="PCM_16")
    >>> audio_info(path)
    (16000, 1000, 1)
    >>> with open(path, "r+b") as fh:
    ...     _ = fh.truncate(os.path.getsize(path) - 500)
    >>> audio_info(path)
    Traceback (most recent call last):
      ...
    cald_speech.errors.AudioError: ...cut.wav: truncated: the header announces 2000 bytes ...
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
    _check_complete(path)
    return info.samplerate, info.frames, info.channels


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
    cald_speech.errors.AudioError: a.wav: holds 1 non-finite sample(s) (NaN or Inf), ...sample 1 ...
    """
    bad = ~np.isfinite(np.asarray(samples))
    if bad.any():
        first = offset + int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
        raise AudioError(
            path, f"holds {int(bad.sum())} non-finite sample(s) (NaN or Inf), the first at "
            f"sample {first}", "re-export the recording from its source, or leave it "
            "out of the manifest")


def load_audio(path, target_sr=SAMPLE_RATE, start=0, stop=None):
    """Reads an audio file in blocks as a mono float32 tensor at ``target_sr``.

    Multi-channel audio is averaged to mono block by block, so that a long multichannel
    file never sits in memory at full width; each block is checked for NaN and infinite
    samples (:func:`check_finite`); other rates are resampled.

    Arguments
    ---------
    path : str or os.PathLike
        Any format libsndfile reads (wav, flac, ogg, mp3, ...).
    target_sr : int or None
        Output rate; ``None`` keeps the file's own rate.
    start, stop : int
        Frame range to read, in the file's own rate (for long files).

    Returns
    -------
    wav : torch.Tensor
        (T,) float32 waveform.
    info : dict
        ``sample_rate`` and ``channels`` of the file, ``frames`` read (at its own rate).

    Raises
    ------
    AudioError
        Missing, a directory, empty, not audio, truncated, undecodable, or holding a
        non-finite sample.

    Example
    -------
    >>> import os, tempfile, numpy as np, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, np.full((44100, 2), 0.1, dtype="float32"), 44100)
    >>> wav, info = load_audio(path)
    >>> tuple(wav.shape), info["sample_rate"], info["channels"]
    ((16000,), 44100, 2)
    >>> wav, info = load_audio(path, target_sr=None, start=100, stop=400)
    >>> tuple(wav.shape), info["frames"]
    ((300,), 300)
    """
    path = str(path)
    orig_sr, frames, channels = audio_info(path)
    first, last, _ = slice(start, stop).indices(frames)
    wanted = max(0, last - first)
    out = np.empty(wanted, dtype=np.float32)
    n = 0
    try:
        for block in sf.blocks(path, blocksize=READ_BLOCK, start=start, stop=stop,
                               dtype="float32", always_2d=True):
            k = min(block.shape[0], wanted - n)
            check_finite(path, block[:k], offset=first + n)
            out[n:n + k] = block[:k].mean(axis=1) if block.shape[1] > 1 else block[:k, 0]
            n += k
    except AudioError:
        raise
    except Exception as exc:  # libsndfile raises its own error types
        raise AudioError(
            path, f"could not decode audio ({exc}); the file may be truncated or damaged",
            "re-create it, or convert it to wav/flac (e.g. with sox or ffmpeg)",
        ) from None
    if n == 0:
        raise AudioError(path, "contains no audio samples", "remove it from the corpus")
    wav = torch.from_numpy(out[:n])
    if target_sr is not None and orig_sr != target_sr:
        wav = resample(wav, orig_sr, target_sr)
    return wav.contiguous(), {"sample_rate": orig_sr, "channels": channels, "frames": n}
