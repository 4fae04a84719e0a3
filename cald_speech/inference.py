"""Transcribing audio of any length with a packaged student or teacher.

A packaged model folder (written by :func:`cald_speech.experiment.package_model` at the
end of a recipe) holds the model (``config.json`` + ``model.safetensors``, a student or
a transformers CTC model), its tokenizer (``tokenizer.json``) and ``cald_info.json``.
:meth:`Transcriber.from_pretrained` loads it; :meth:`Transcriber.transcribe_file`,
:meth:`Transcriber.transcribe_batch` and :meth:`Transcriber.transcribe_waveform`
return :class:`Transcript` objects (text, words with start/end/confidence, the
file's original rate and channels) that print as text, JSON or SRT.

Any format libsndfile reads, any rate and channel count: files are read in blocks,
downmixed to mono and resampled to 16 kHz. Digital silence gives an empty transcript;
unreadable, empty, truncated or non-audio files raise
:class:`~cald_speech.errors.AudioError` naming the file and the fix.

How long audio is computed (``mode``)
-------------------------------------
``"one-pass"`` (default for students whose every layer is a linear-time mixer)
    The whole file in one pass, with memory bounded by a few copies of the
    ``(T, hidden)`` sequence:

    - the CNN front end runs over blocks of the waveform that overlap by its receptive
      field minus its stride (:func:`cnn_geometry`), which gives exactly the frames of
      a one-shot run (:func:`cnn_features`). A group-norm CNN (wav2vec2-base,
      ``feat_extract_norm="group"``) normalises each channel of its first layer with
      statistics gathered in a first pass over the file: by default those of the 30 s
      around each 10 s block (``norm_window_s``), the span a model trained on single
      utterances expects and the one each window of the windowed mode uses; with
      ``norm_window_s=0`` those of the whole file, exactly as a plain call;
    - the encoder sees the whole sequence at once, without any ``T x T`` mask; its
      time-local parts (feature projection, positional convolution, feed-forward
      blocks) are computed in blocks of frames and BiMamba2 mixers scan their
      sequence block by block with the convolution and SSM states carried in both
      directions (:func:`bimamba2_blockwise`) — the same function as a plain call,
      at a fraction of its memory (see :func:`long_form`).
``"windowed"`` (default for teachers and for students that keep softmax attention)
    Windows of ``window_s`` seconds (default 30) overlapping by ``overlap_s`` seconds
    (default 2) on each side; each window is run as if it were a file of its own (its
    CNN in blocks, as above), its CTC posteriors keep only their centre frames, and
    these are put back together and decoded once (:func:`window_plan`,
    :func:`stitch`).
``"plain"``
    One call of the model on the waveform, as transformers would run it (a reference).

Word timestamps come from the greedy CTC alignment: frame ``t`` starts at ``t *
stride / 16000`` s (``stride`` is the CNN's total stride, 320 samples = 20 ms for
wav2vec2), and a word's confidence is the mean of the frame posteriors of the tokens
aligned to it (:func:`align_words`).

Intent models (the SLURP recipe's ``model/`` folder) are served by :class:`Classifier`
(``classify_file``, ``classify_batch``), with the same audio handling; ``cald-transcribe``
picks it by itself when ``--model`` is such a folder.

Command line: ``cald-transcribe FILE... --model DIR [--format txt|json|srt]
[--chunk-s S] [--output-dir D]``; see :func:`main`.

Example
-------
>>> import tempfile, torch
>>> from cald_speech.convert import convert, tiny_teacher
>>> from cald_speech.data.tokenizer import CharTokenizer
>>> from cald_speech.experiment import package_model
>>> folder = package_model(convert(tiny_teacher(head="ctc", vocab_size=29)),
...                        tempfile.mkdtemp(), CharTokenizer())
>>> asr = Transcriber.from_pretrained(folder)
>>> asr.default_mode(16000 * 3600)
'one-pass'
>>> result = asr.transcribe_waveform(0.1 * torch.randn(16000))
>>> result.duration, result.sample_rate, result.mode
(1.0, 16000, 'one-pass')
"""

import argparse
import contextlib
import json
import math
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from cald_speech.data.audio import SAMPLE_RATE, audio_info, check_finite, resample
from cald_speech.errors import AudioError, CaldError, ConfigError, DataError
from cald_speech.features import base_model, enable_feature_input, frame_lengths
from cald_speech.mixers.bimamba2 import BiMamba2, BiMamba2Shared
from cald_speech.student import (
    MixerAttention,
    Student,
    encoder_layers,
    frame_padding_mask,
    load_model,
    read_config,
)

__all__ = [
    "MODES",
    "Transcriber",
    "Transcript",
    "Word",
    "align_words",
    "bimamba2_blockwise",
    "cnn_features",
    "cnn_geometry",
    "long_form",
    "main",
    "model_task",
    "read_mono",
    "stitch",
    "window_plan",
]

MODES = ("auto", "one-pass", "windowed", "plain")
#: Teacher windows: seconds the model sees at once, and context on each side.
DEFAULT_WINDOW_S = 30.0
DEFAULT_OVERLAP_S = 2.0
#: One-pass mode, group-norm CNN: seconds of audio whose statistics normalise each block.
DEFAULT_NORM_WINDOW_S = 30.0
#: Seconds of audio per CNN block in one-pass mode.
DEFAULT_CNN_BLOCK_S = 10.0
#: Frames per block of the encoder's time-local parts and of blockwise BiMamba2 scans.
DEFAULT_ENCODER_BLOCK = 2048
#: One-pass mode: MiB of a shared-projection mixer's in_proj features kept for reuse
#: by its backward scan (see :func:`bimamba2_blockwise`); 2 GiB covers an hour of
#: wav2vec2-base-sized features.
DEFAULT_PROJECTION_CACHE_MB = 2048
#: Peak amplitude below which a whole file counts as silent (-80 dBFS).
SILENCE_PEAK = 1e-4
#: Audio longer than this shows progress bars by default (when stderr is a terminal).
PROGRESS_AFTER_S = 60.0
#: Frames read from a file at a time.
READ_BLOCK = 1 << 20
FORMATS = ("txt", "json", "srt")


# ---------------------------------------------------------------------------------------
# Reading audio
# ---------------------------------------------------------------------------------------


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


def read_mono(path, target_sr=SAMPLE_RATE):
    """Reads an audio file in blocks as a mono float32 tensor at ``target_sr``.

    Like :func:`cald_speech.data.audio.load_audio`, but the channels are averaged block
    by block, so that a long multichannel file never sits in memory at full width.

    Arguments
    ---------
    path : str or os.PathLike
        Any format libsndfile reads (wav, flac, ogg, mp3, ...).
    target_sr : int
        Output rate.

    Returns
    -------
    wav : torch.Tensor
        (N,) float32 waveform at ``target_sr``.
    info : dict
        ``sample_rate`` and ``channels`` of the file, ``frames`` read.

    Raises
    ------
    AudioError
        Missing, a directory, empty, not audio, truncated or undecodable.

    Example
    -------
    >>> import os, tempfile, numpy as np, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, np.full((44100, 2), 0.1, dtype="float32"), 44100)
    >>> wav, info = read_mono(path)
    >>> tuple(wav.shape), info["sample_rate"], info["channels"]
    ((16000,), 44100, 2)
    """
    path = str(path)
    orig_sr, frames, channels = audio_info(path)
    cut = _wav_truncation(path)
    if cut is not None:
        declared, present = cut
        raise AudioError(
            path, f"truncated: the header announces {declared} bytes of audio but only "
            f"{present} are present", "re-create or re-download it, or rewrite its header "
            "(e.g. sox in.wav fixed.wav) to keep the part that is there",
        )
    out = np.empty(frames, dtype=np.float32)
    n = 0
    try:
        with sf.SoundFile(path) as fh:
            for block in fh.blocks(blocksize=READ_BLOCK, dtype="float32", always_2d=True):
                k = min(block.shape[0], frames - n)
                check_finite(path, block[:k], offset=n)
                out[n:n + k] = block[:k].mean(axis=1) if block.shape[1] > 1 else block[:k, 0]
                n += k
    except Exception as exc:  # libsndfile raises its own error types
        raise AudioError(
            path, f"could not decode audio ({exc}); the file may be truncated or damaged",
            "re-create it, or convert it to wav/flac (e.g. with sox or ffmpeg)",
        ) from None
    if n == 0:
        raise AudioError(path, "contains no audio samples", "check the file")
    wav = torch.from_numpy(out[:n])
    if orig_sr != target_sr:
        wav = resample(wav, orig_sr, target_sr)
    return wav.contiguous(), {"sample_rate": orig_sr, "channels": channels, "frames": n}


# ---------------------------------------------------------------------------------------
# CNN front end in blocks
# ---------------------------------------------------------------------------------------


def cnn_geometry(config):
    """Receptive field and total stride (in samples) of the CNN feature encoder.

    Output frame ``t`` depends on exactly the samples ``[t * stride, t * stride +
    receptive_field)``.

    Arguments
    ---------
    config : transformers.PretrainedConfig
        With ``conv_kernel`` and ``conv_stride``.

    Returns
    -------
    tuple of int
        ``(receptive_field, stride)``.

    Example
    -------
    >>> from transformers import Wav2Vec2Config
    >>> cnn_geometry(Wav2Vec2Config())  # 25 ms windows every 20 ms
    (400, 320)
    """
    field_, stride = 1, 1
    for kernel, step in zip(config.conv_kernel, config.conv_stride):
        field_ += (kernel - 1) * stride
        stride *= step
    return field_, stride


def _group_norm_pieces(layer, wav, piece_frames, device, dtype, progress):
    """(count, mean, M2) per channel of conv layer 0's output, per piece of the waveform.

    Pieces are disjoint runs of ``piece_frames`` layer-0 frames (the last may be
    shorter); returns ``counts`` (P,), ``means`` (P, C) and ``m2s`` (P, C) in float64.
    """
    conv = layer.conv
    k, s = conv.kernel_size[0], conv.stride[0]
    total = (wav.numel() - k) // s + 1
    counts, means, m2s = [], [], []
    for f0 in range(0, total, piece_frames):
        f1 = min(f0 + piece_frames, total)
        x = wav[f0 * s:(f1 - 1) * s + k].to(device=device, dtype=dtype)[None, None]
        h = conv(x)[0]
        var_b, mean_b = torch.var_mean(h.float(), dim=-1, correction=0)
        counts.append(h.shape[-1])
        means.append(mean_b.double())
        m2s.append(var_b.double() * h.shape[-1])
        progress.update(1)
    counts = torch.tensor(counts, dtype=torch.float64, device=means[0].device)
    return counts, torch.stack(means), torch.stack(m2s)


def _merged_norm(layer, counts, means, m2s, dtype):
    """Mean and 1/std of the union of pieces (the exact parallel-variance formula)."""
    n = counts.sum()
    mean = (counts[:, None] * means).sum(0) / n
    m2 = m2s.sum(0) + (counts[:, None] * (means - mean).square()).sum(0)
    rstd = torch.rsqrt(m2 / n + layer.layer_norm.eps)
    return mean.to(dtype), rstd.to(dtype)


def padded_features(model, waveforms, device, block_frames=None):
    """CNN features of each waveform computed alone, padded into one batch.

    A group-norm front end normalises over the whole input, so the CNN must not see
    another item's padding; the encoder then takes the padded features with the
    sample mask.

    Returns
    -------
    features : torch.Tensor
        (B, C, T) zero-padded features.
    mask : torch.Tensor
        (B, N) sample mask (1 on real samples), for the encoder's frame mask.
    frames : list of int
        Valid frames per item.
    """
    feats = [cnn_features(model, w.to(device), block_frames) for w in waveforms]
    frames = [f.shape[-1] for f in feats]
    batch = feats[0].new_zeros(len(feats), feats[0].shape[0], max(frames))
    for j, f in enumerate(feats):
        batch[j, :, :f.shape[-1]] = f
    lengths = [int(w.shape[-1]) for w in waveforms]
    mask = torch.zeros(len(waveforms), max(lengths), dtype=torch.long, device=device)
    for j, n in enumerate(lengths):
        mask[j, :n] = 1
    return batch, mask, frames


def _apply_group_norm_layer(layer, x, mean, rstd):
    h = layer.conv(x)
    norm = layer.layer_norm
    scale = rstd if norm.weight is None else rstd * norm.weight
    h = h.sub_(mean[:, None]).mul_(scale[:, None])
    if norm.bias is not None:
        h = h.add_(norm.bias[:, None])
    return layer.activation(h)


def cnn_features(model, wav, block_frames=None, progress=None, norm_blocks=None):
    """The CNN feature encoder's output for a whole waveform, computed in blocks.

    Each block of output frames ``[a, b)`` is computed from the samples ``[a * stride,
    (b - 1) * stride + receptive_field)`` (:func:`cnn_geometry`), so blocks overlap by
    ``receptive_field - stride`` samples and their frames are exactly those of a
    one-shot run. A group-norm CNN's first layer is normalised with statistics over the
    whole input, gathered in a first pass (two passes over layer 0, one over the rest).

    With ``norm_blocks``, an input of more blocks than that is normalised locally
    instead: the statistics are gathered per block (over the layer-0 frames that start
    in it) and each block is normalised with those of the ``norm_blocks`` blocks
    centred on it (moved inside the input at its ends), i.e. with the statistics of a
    stretch of audio of about the length the model saw in training, as each window of
    the windowed mode is. Same cost as whole-input statistics.

    Arguments
    ---------
    model : transformers.PreTrainedModel or Student
        A wav2vec2 / HuBERT / WavLM model.
    wav : torch.Tensor
        (N,) waveform at 16 kHz.
    block_frames : int, optional
        Output frames per block (default: 10 s of audio).
    norm_blocks : int, optional
        Span of the group-norm statistics in blocks (default: the whole input).
    progress : tqdm.tqdm, optional
        Updated once per block (and per statistics block).

    Returns
    -------
    torch.Tensor
        (C, T) features on the model's device, ``T = frame_lengths(model, N)``
        (``T = 0`` when the input is shorter than the receptive field).

    Example
    -------
    >>> import torch
    >>> from cald_speech.convert import tiny_teacher
    >>> model = tiny_teacher()  # group norm, like wav2vec2-base
    >>> wav = torch.randn(5000)
    >>> blocks = cnn_features(model, wav, block_frames=7)
    >>> with torch.no_grad():
    ...     whole = model.feature_extractor(wav[None])[0]
    >>> blocks.shape == whole.shape, torch.allclose(blocks, whole, atol=1e-4)
    (True, True)
    """
    inner = base_model(model)
    config = inner.config
    fe = inner.feature_extractor
    layers = fe.conv_layers
    field_, stride = cnn_geometry(config)
    param = next(fe.parameters())
    device, dtype = param.device, param.dtype
    wav = wav.reshape(-1)
    n = wav.numel()
    total = int(frame_lengths(model, n)) if n >= field_ else 0
    channels = config.conv_dim[-1]
    if total <= 0:
        return torch.zeros(channels, 0, device=device, dtype=dtype)
    if block_frames is None:
        block_frames = max(1, int(DEFAULT_CNN_BLOCK_S * SAMPLE_RATE) // stride)
    block_frames = int(block_frames)
    group = config.feat_extract_norm == "group"
    bar = progress if progress is not None else _NoProgress()
    with torch.inference_mode():
        if group:
            norm = layers[0].layer_norm
            if norm.num_groups != norm.num_channels:
                raise ConfigError(
                    f"first CNN layer has GroupNorm with {norm.num_groups} groups for "
                    f"{norm.num_channels} channels; only per-channel group norm is supported"
                )
            # piece i of layer-0 frames starts at the first sample of block i
            s0 = layers[0].conv.stride[0]
            pieces = _group_norm_pieces(layers[0], wav, block_frames * (stride // s0),
                                        device, dtype, bar)
            n_pieces = pieces[0].numel()
            local = norm_blocks is not None and n_pieces > norm_blocks
            if not local:
                mean, rstd = _merged_norm(layers[0], *pieces, dtype)
        out = torch.empty(channels, total, device=device, dtype=dtype)
        for a in range(0, total, block_frames):
            b = min(a + block_frames, total)
            if group and local:
                lo = min(max(0, a // block_frames - (norm_blocks - 1) // 2),
                         n_pieces - norm_blocks)
                window = slice(lo, lo + norm_blocks)
                mean, rstd = _merged_norm(layers[0], *(t[window] for t in pieces), dtype)
            x = wav[a * stride:(b - 1) * stride + field_].to(device=device, dtype=dtype)
            x = x[None, None]
            for i, layer in enumerate(layers):
                x = _apply_group_norm_layer(layer, x, mean, rstd) if group and i == 0 else layer(x)
            if x.shape[-1] != b - a:  # pragma: no cover - would be a geometry bug
                raise RuntimeError(f"CNN block gave {x.shape[-1]} frames, expected {b - a}")
            out[:, a:b] = x[0]
            bar.update(1)
    return out


def _cnn_blocks(model, num_samples, block_frames):
    field_, stride = cnn_geometry(base_model(model).config)
    if num_samples < field_:
        return 0
    total = int(frame_lengths(model, num_samples))
    blocks = math.ceil(total / block_frames)
    return blocks * (2 if base_model(model).config.feat_extract_norm == "group" else 1)


# ---------------------------------------------------------------------------------------
# Encoder over the whole sequence, block by block where that is exact
# ---------------------------------------------------------------------------------------


class _TimeBlocked(nn.Module):
    """Runs a module that is local in time over blocks of frames (dim 1), exactly.

    Each block ``[a, b)`` sees ``context`` extra frames on each side (where they exist)
    and keeps its own output frames; tuple outputs are assembled element-wise.
    """

    def __init__(self, module, block, context=0):
        super().__init__()
        self.inner = module
        self.block = int(block)
        self.context = int(context)

    def forward(self, x, *args, **kwargs):
        total = x.shape[1]
        if total <= self.block:
            return self.inner(x, *args, **kwargs)
        outs = None
        for a in range(0, total, self.block):
            b = min(a + self.block, total)
            s, e = max(0, a - self.context), min(total, b + self.context)
            y = self.inner(x[:, s:e], *args, **kwargs)
            parts = y if isinstance(y, tuple) else (y,)
            if outs is None:
                outs = [p.new_empty((p.shape[0], total) + p.shape[2:]) for p in parts]
            for o, p in zip(outs, parts):
                o[:, a:b] = p[:, a - s:b - s]
        return tuple(outs) if isinstance(y, tuple) else outs[0]


class _ProjectionCache:
    """in_proj features of the latest blocks, up to ``limit_bytes`` (oldest dropped first).

    A shared-projection mixer's forward sweep fills it and its backward sweep, which
    starts from the last block, takes them back instead of recomputing the product.
    """

    def __init__(self, limit_bytes):
        self.limit = max(0, int(limit_bytes))
        self.blocks = {}  # start frame -> (zxbc, dt), in insertion (time) order
        self.bytes = 0

    @staticmethod
    def _size(features):
        return sum(t.numel() * t.element_size() for t in features)

    def put(self, start, features):
        size = self._size(features)
        if size > self.limit:
            return
        self.blocks[start] = features
        self.bytes += size
        while self.bytes > self.limit:
            oldest = next(iter(self.blocks))
            self.bytes -= self._size(self.blocks.pop(oldest))

    def take(self, start):
        features = self.blocks.pop(start, None)
        if features is not None:
            self.bytes -= self._size(features)
        return features


def _scan_direction(core, in_proj, out_proj, x, block, reverse, out=None, cache=None):
    """One Mamba2 direction over (1, T, C) in blocks, carrying conv and SSM states.

    ``core`` is a ``_SSMCore`` (its conv1d, dt_bias, A_log, D, norm and shapes);
    ``in_proj`` / ``out_proj`` the projections (``out_proj=None``: return the normalised
    SSM output, width ``d_inner``). ``reverse`` scans from the last frame to the first.
    With ``out`` given, the result is added to it (no second full-length buffer). With a
    :class:`_ProjectionCache`, a forward scan stores each block's in_proj features in it
    and a reverse scan uses the stored ones (time-reversed) instead of recomputing them.
    """
    total = x.shape[1]
    starts = list(range(0, total, block))
    if reverse:
        starts.reverse()
    width = core.d_inner if out_proj is None else out_proj.out_features
    add = out is not None
    if not add:
        out = x.new_empty(1, total, width)
    conv_state, ssm_state = None, None
    for a in starts:
        b = min(a + block, total)
        features = cache.take(a) if reverse and cache is not None else None
        if features is not None:
            features = tuple(t.flip(1) for t in features)
        else:
            u = x[:, a:b]
            features = core.project(in_proj, u.flip(1) if reverse else u)
            if cache is not None and not reverse:
                cache.put(a, features)
        y, conv_state, ssm_state = core.ssm(*features, conv_state, ssm_state,
                                            return_states=True)
        if out_proj is not None:
            y = out_proj(y)
        y = y.flip(1) if reverse else y
        if add:
            out[:, a:b] += y
        else:
            out[:, a:b] = y
    return out


def bimamba2_blockwise(mixer, x, block=DEFAULT_ENCODER_BLOCK,
                       projection_cache_mb=DEFAULT_PROJECTION_CACHE_MB):
    """A BiMamba2 (or BiMamba2Shared) mixer over one unpadded sequence, block by block.

    The forward direction scans the blocks from first to last and the backward
    direction from last to first, each carrying its depthwise-convolution context and
    its SSM state from block to block (``ssd_scan(initial_states=...)``), so the result
    is the mixer's own output for the whole sequence (up to rounding) while its
    intermediate tensors only ever hold one block.

    A :class:`BiMamba2Shared` mixer's backward direction needs the same in_proj
    features as its forward one: the forward scan keeps those of its latest blocks, up
    to ``projection_cache_mb``, and the backward scan (which starts at the end) reuses
    them; only blocks beyond that budget are projected twice.

    Arguments
    ---------
    mixer : BiMamba2 or BiMamba2Shared
        The mixer.
    x : torch.Tensor
        (1, T, C) hidden states, no padding.
    block : int
        Frames per block (a multiple of the scan's chunk size keeps rounding closest).
    projection_cache_mb : float
        Memory for reused in_proj features of a shared-projection mixer (0: none).

    Returns
    -------
    torch.Tensor
        (1, T, C).

    Example
    -------
    >>> import torch
    >>> m = BiMamba2(16, 2, d_state=8, chunk_size=4).eval()
    >>> x = torch.randn(1, 37, 16)
    >>> with torch.no_grad():
    ...     torch.allclose(bimamba2_blockwise(m, x, block=8), m(x), atol=1e-5)
    True
    """
    if x.shape[0] != 1:
        raise ConfigError("bimamba2_blockwise takes one unpadded sequence (batch size 1)")
    if isinstance(mixer, BiMamba2):
        out = _scan_direction(mixer.fwd, mixer.fwd.in_proj, mixer.fwd.out_proj, x, block, False)
        _scan_direction(mixer.bwd, mixer.bwd.in_proj, mixer.bwd.out_proj, x, block, True, out)
        return out.mul_(0.5) if mixer.combine == "mean" else out
    if isinstance(mixer, BiMamba2Shared):
        cache = _ProjectionCache(projection_cache_mb * 2**20)
        y = _scan_direction(mixer.fwd, mixer.in_proj, None, x, block, False, cache=cache)
        _scan_direction(mixer.bwd, mixer.in_proj, None, x, block, True, y, cache=cache)
        if mixer.combine == "mean":
            y.mul_(0.5)
        lin = mixer.out_proj
        if lin.in_features != lin.out_features:
            return _TimeBlocked(lin, block)(y)
        for a in range(0, y.shape[1], block):  # in place: no second (T, C) buffer
            y[:, a:a + block] = lin(y[:, a:a + block])
        return y
    raise ConfigError(f"{type(mixer).__name__} has no blockwise scan; call it directly")


class _BlockwiseMixerAttention(nn.Module):
    """Stands in for a :class:`MixerAttention` whose mixer can be scanned block by block."""

    def __init__(self, inner, block, projection_cache_mb=DEFAULT_PROJECTION_CACHE_MB):
        super().__init__()
        self.inner = inner
        self.block = int(block)
        self.projection_cache_mb = projection_cache_mb

    def forward(self, hidden_states, attention_mask=None, position_bias=None, **kwargs):
        mask = frame_padding_mask(attention_mask)
        if hidden_states.shape[0] != 1 or (mask is not None and not bool(mask.all())):
            return self.inner(hidden_states, attention_mask=attention_mask,
                              position_bias=position_bias, **kwargs)
        out = bimamba2_blockwise(self.inner.mixer, hidden_states, self.block,
                                 self.projection_cache_mb)
        if self.inner.passes_position_bias:
            return out, None, position_bias
        return out, None


@contextlib.contextmanager
def long_form(model, block=DEFAULT_ENCODER_BLOCK, progress=None,
              projection_cache_mb=DEFAULT_PROJECTION_CACHE_MB):
    """Lets ``model`` run over very long sequences in memory linear in T with a small factor.

    Inside the ``with`` block, the feature projection, positional convolution (with its
    half-kernel of context) and every feed-forward block are computed in blocks of
    ``block`` frames, and BiMamba2 mixers scan block by block
    (:func:`bimamba2_blockwise`); all of these are exact, so outputs match a plain call
    up to rounding. Other mixers and softmax attention run on the whole sequence as
    usual. The modules are put back on exit.

    Arguments
    ---------
    model : transformers.PreTrainedModel or Student
        A wav2vec2 / HuBERT / WavLM model.
    block : int
        Frames per block.
    projection_cache_mb : float
        See :func:`bimamba2_blockwise`.
    progress : tqdm.tqdm, optional
        Updated after each encoder layer.

    Example
    -------
    >>> import torch
    >>> from cald_speech.convert import convert, tiny_teacher
    >>> student = convert(tiny_teacher(head="ctc"))
    >>> wav = torch.randn(1, 16000)
    >>> with torch.no_grad():
    ...     plain = student(wav).logits
    ...     with long_form(student, block=16):
    ...         blocked = student(wav).logits
    >>> torch.allclose(plain, blocked, atol=1e-4)
    True
    """
    inner = base_model(model)
    encoder = inner.encoder
    swaps = [(inner, "feature_projection", _TimeBlocked(inner.feature_projection, block))]
    kernel = int(getattr(inner.config, "num_conv_pos_embeddings", 0) or 0)
    swaps.append((encoder, "pos_conv_embed",
                  _TimeBlocked(encoder.pos_conv_embed, block, kernel // 2 + 1)))
    hooks = []
    for layer in encoder_layers(model):
        swaps.append((layer, "feed_forward", _TimeBlocked(layer.feed_forward, block)))
        att = layer.attention
        if isinstance(att, MixerAttention) and isinstance(att.mixer, (BiMamba2, BiMamba2Shared)):
            swaps.append((layer, "attention",
                          _BlockwiseMixerAttention(att, block, projection_cache_mb)))
        if progress is not None:
            hooks.append(layer.register_forward_hook(lambda *_: progress.update(1)))
    originals = [(parent, name, getattr(parent, name)) for parent, name, _ in swaps]
    try:
        for parent, name, module in swaps:
            setattr(parent, name, module)
        yield model
    finally:
        for parent, name, module in originals:
            setattr(parent, name, module)
        for hook in hooks:
            hook.remove()


# ---------------------------------------------------------------------------------------
# Windows for quadratic models
# ---------------------------------------------------------------------------------------


def window_plan(num_frames, window_frames, context_frames):
    """Windows over ``num_frames`` frames and the centre frames each one keeps.

    Every window spans at most ``window_frames`` frames; its first and last
    ``context_frames`` frames are context (dropped) except at the start and end of the
    input, and the kept parts tile ``[0, num_frames)`` without gap or overlap.

    Arguments
    ---------
    num_frames : int
        Frames of the whole input.
    window_frames : int
        Frames a window spans.
    context_frames : int
        Frames of context on each side.

    Returns
    -------
    list of tuple
        ``(start, end, keep_start, keep_end)`` per window, in frames.

    Example
    -------
    >>> window_plan(10, 20, 2)
    [(0, 10, 0, 10)]
    >>> window_plan(25, 10, 2)
    [(0, 10, 0, 8), (6, 16, 8, 14), (12, 22, 14, 20), (18, 25, 20, 25)]
    """
    num_frames, window_frames = int(num_frames), int(window_frames)
    context_frames = int(context_frames)
    if num_frames <= window_frames:
        return [(0, num_frames, 0, num_frames)]
    step = window_frames - 2 * context_frames
    if step < 1:
        raise ConfigError(
            f"a window of {window_frames} frames leaves nothing to keep after {context_frames} "
            "frames of context on each side; use a longer window or a shorter overlap"
        )
    plan = []
    keep0, keep1 = 0, window_frames - context_frames
    while True:
        keep1 = min(keep1, num_frames)
        plan.append((max(0, keep0 - context_frames), min(num_frames, keep1 + context_frames),
                     keep0, keep1))
        if keep1 >= num_frames:
            return plan
        keep0, keep1 = keep1, keep1 + step


def stitch(plan, posteriors):
    """Puts the kept centre frames of each window's posteriors back together.

    Arguments
    ---------
    plan : list of tuple
        From :func:`window_plan`.
    posteriors : iterable of torch.Tensor
        One (end - start, V) tensor per window.

    Returns
    -------
    torch.Tensor
        (num_frames, V).

    Example
    -------
    >>> import torch
    >>> full = torch.arange(25.0)[:, None]
    >>> plan = window_plan(25, 10, 2)
    >>> torch.equal(stitch(plan, [full[s:e] for s, e, _, _ in plan]), full)
    True
    """
    kept = []
    for (start, end, k0, k1), post in zip(plan, posteriors):
        if post.shape[0] != end - start:
            raise ValueError(f"window [{start}, {end}) has {post.shape[0]} frames of posteriors")
        kept.append(post[k0 - start:k1 - start])
    return torch.cat(kept, dim=0)


# ---------------------------------------------------------------------------------------
# Alignment, words, output formats
# ---------------------------------------------------------------------------------------


@dataclass
class Word:
    """A word of a transcript: text, start and end in seconds, confidence in [0, 1]."""

    word: str
    start: float
    end: float
    confidence: float

    def to_dict(self):
        """The JSON form ``{"word", "start", "end", "confidence"}`` (rounded)."""
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3),
                "confidence": round(self.confidence, 4)}


def _word_starts(tokenizer, ids):
    """For each token id: (is a word separator, starts a new word)."""
    from cald_speech.data.tokenizer import CharTokenizer, SentencePieceTokenizer

    if isinstance(tokenizer, CharTokenizer):
        return [(i == tokenizer.word_sep_id, False) for i in ids]
    if isinstance(tokenizer, SentencePieceTokenizer):
        pieces = [tokenizer.sp.id_to_piece(i) for i in ids]
        return [(p == "\u2581", p.startswith("\u2581")) for p in pieces]
    raise ConfigError(f"no word alignment for a {type(tokenizer).__name__}")


def align_words(log_probs, tokenizer, frame_shift, duration=None):
    """Greedy CTC decoding with word timestamps and confidences.

    The argmax path is collapsed into runs; each non-blank run is one token aligned to
    its frames. Words are split at the word separator (character tokenizers) or at
    pieces starting with ``▁`` (SentencePiece). A word starts at its first token's
    first frame and ends after its last token's last frame; its confidence is the mean
    of the maximum posterior over its tokens' frames.

    Arguments
    ---------
    log_probs : torch.Tensor
        (T, V) log posteriors (blank = 0).
    tokenizer : CharTokenizer or SentencePieceTokenizer
        The model's tokenizer.
    frame_shift : float
        Seconds per frame (CNN stride / 16 kHz).
    duration : float, optional
        Audio duration; word ends are clipped to it.

    Returns
    -------
    text : str
        ``tokenizer.decode_ctc`` of the argmax path.
    words : list of Word

    Example
    -------
    >>> import torch
    >>> from cald_speech.data.tokenizer import CharTokenizer
    >>> tok = CharTokenizer()  # 0 blank, 1 "|", 2 A, 3 B, ...
    >>> path = [0, 2, 2, 0, 1, 3, 0, 3]  # A | B B
    >>> lp = torch.log(torch.nn.functional.one_hot(torch.tensor(path), 29).float() * 0.9 + 0.001)
    >>> text, words = align_words(lp, tok, 0.02)
    >>> text, [(w.word, w.start, w.end) for w in words]
    ('A BB', [('A', 0.02, 0.06), ('BB', 0.1, 0.16)])
    """
    if log_probs.shape[0] == 0:
        return "", []
    best, ids = log_probs.float().max(dim=-1)
    probs = best.exp()
    ids_list = ids.tolist()
    text = tokenizer.decode_ctc(ids_list)
    values, counts = torch.unique_consecutive(ids, return_counts=True)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    csum = torch.cat([probs.new_zeros(1), torch.cumsum(probs.double(), 0).float()])
    runs = [(v, s, e) for v, s, e in zip(values.tolist(), starts.tolist(), ends.tolist())
            if v != 0]
    flags = _word_starts(tokenizer, [v for v, _, _ in runs])
    groups, current = [], []
    for (v, s, e), (is_sep, starts_word) in zip(runs, flags):
        if is_sep or (starts_word and current):
            if current:
                groups.append(current)
            current = []
        if not is_sep:
            current.append((v, s, e))
    if current:
        groups.append(current)
    words = []
    limit = float("inf") if duration is None else float(duration)
    for group in groups:
        word = tokenizer.decode([v for v, _, _ in group]).strip()
        if not word:
            continue
        mass = sum(float(csum[e] - csum[s]) for _, s, e in group)
        frames = sum(e - s for _, s, e in group)
        start = min(group[0][1] * frame_shift, limit)
        end = min(group[-1][2] * frame_shift, limit)
        words.append(Word(word, round(start, 6), round(end, 6), mass / frames))
    return text, words


def _srt_time(seconds):
    ms = int(round(max(seconds, 0.0) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(words, max_chars=42, max_duration=6.0, max_gap=1.0):
    """SubRip subtitles from timed words: cues of at most ``max_chars`` characters.

    A new cue starts when the line would grow past ``max_chars``, last longer than
    ``max_duration`` seconds, or after a pause longer than ``max_gap`` seconds.

    Example
    -------
    >>> print(to_srt([Word("HELLO", 0.0, 0.5, 1.0), Word("WORLD", 0.6, 1.0, 1.0),
    ...               Word("AGAIN", 3.0, 3.4, 1.0)]))
    1
    00:00:00,000 --> 00:00:01,000
    HELLO WORLD
    <BLANKLINE>
    2
    00:00:03,000 --> 00:00:03,400
    AGAIN
    <BLANKLINE>
    """
    cues, line = [], []
    for w in words:
        if line:
            text = " ".join(x.word for x in line + [w])
            if (len(text) > max_chars or w.end - line[0].start > max_duration
                    or w.start - line[-1].end > max_gap):
                cues.append(line)
                line = []
        line.append(w)
    if line:
        cues.append(line)
    blocks = []
    for i, cue in enumerate(cues, start=1):
        end = max(cue[-1].end, cue[0].start + 0.001)
        blocks.append(f"{i}\n{_srt_time(cue[0].start)} --> {_srt_time(end)}\n"
                      f"{' '.join(w.word for w in cue)}\n")
    return "\n".join(blocks)


@dataclass
class Transcript:
    """What :class:`Transcriber` returns for one input.

    Attributes
    ----------
    text : str
        The transcript.
    words : list of Word
        Timed words (empty when timestamps were not asked for).
    duration : float
        Seconds of audio.
    sample_rate : int
        The input's original sample rate (before resampling to 16 kHz).
    channels : int
        The input's channel count (before downmixing).
    path : str or None
        The file, when transcribed from one.
    mode : str
        How it was computed (``one-pass``, ``windowed``, ``plain``, ``silent``).
    """

    text: str
    words: list = field(default_factory=list)
    duration: float = 0.0
    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    path: str = None
    mode: str = ""

    def to_dict(self):
        """JSON-ready dict: path, text, duration, original rate/channels, mode, words."""
        return {
            "path": self.path,
            "text": self.text,
            "duration": round(self.duration, 3),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "mode": self.mode,
            "words": [w.to_dict() for w in self.words],
        }

    def to_json(self, indent=2):
        """The transcript as a JSON document."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_srt(self, **kwargs):
        """The timed words as SubRip subtitles (see :func:`to_srt`)."""
        return to_srt(self.words, **kwargs)

    def format(self, fmt):
        """``"txt"``, ``"json"`` or ``"srt"`` text of the transcript.

        Example
        -------
        >>> t = Transcript("HI", [Word("HI", 0.0, 0.3, 0.9)], duration=1.0)
        >>> t.format("txt")
        'HI\\n'
        >>> json.loads(t.format("json"))["words"][0]["end"]
        0.3
        """
        if fmt == "txt":
            return self.text + "\n"
        if fmt == "json":
            return self.to_json() + "\n"
        if fmt == "srt":
            return self.to_srt()
        raise ConfigError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------
# The transcriber
# ---------------------------------------------------------------------------------------


class _NoProgress:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress_bar(show, total, desc, unit):
    if not show or total <= 0:
        return _NoProgress()
    from tqdm import tqdm

    # show=None: only when stderr is a terminal (tqdm's own rule)
    return tqdm(total=total, desc=desc, unit=unit, disable=None if show is None else False,
                leave=False)


def model_task(config):
    """The task of a model folder's ``config.json`` dict: ``"ctc"`` or ``"classification"``.

    Example
    -------
    >>> model_task({"architectures": ["Wav2Vec2ForCTC"]})
    'ctc'
    >>> model_task({"cald": {"source_class": "HubertForSequenceClassification"}})
    'classification'
    """
    cald = config.get("cald") if isinstance(config.get("cald"), dict) else {}
    arch = cald.get("source_class") or (
        config.get("architectures") or [""])[0]
    if arch.endswith("ForCTC"):
        return "ctc"
    if arch.endswith("ForSequenceClassification"):
        return "classification"
    return "encoder"


def _length_limits(model):
    """(every layer linear-time, longest input in frames or None) of a model."""
    if not isinstance(model, Student):
        return False, None
    return model.is_linear_time(), model.max_frames()


class Transcriber:
    """Speech-to-text with a CTC student or teacher, for inputs of any length.

    Arguments
    ---------
    model : Student or transformers.PreTrainedModel
        A CTC model (``...ForCTC`` or a student converted from one), in eval mode.
    tokenizer : CharTokenizer or SentencePieceTokenizer
        Its tokenizer (blank = 0).
    device : str or torch.device
        Where to run.
    window_s, overlap_s : float
        Windowed mode: seconds per window, and context on each side.
    cnn_block_s : float
        One-pass mode: seconds of audio per CNN block.
    encoder_block : int
        One-pass mode: frames per block of the encoder's blockwise parts.
    projection_cache_mb : float
        One-pass mode: memory for the reused in_proj features of a shared-projection
        student (:func:`bimamba2_blockwise`).
    norm_window_s : float or None
        One-pass mode, group-norm CNN (wav2vec2-base style): seconds of audio around
        each CNN block whose statistics normalise it, in whole blocks of
        ``cnn_block_s`` (default 30 s = 3 blocks, the span each window of the windowed
        mode normalises over by default); ``None`` or 0: the whole file, as a plain
        call of the model.
    info : dict, optional
        The folder's ``cald_info.json``.

    Notes
    -----
    The model is moved to ``device``, put in eval mode and prepared with
    :func:`cald_speech.features.enable_feature_input` (it still takes waveforms).

    Example
    -------
    >>> import torch
    >>> from cald_speech.convert import tiny_teacher
    >>> from cald_speech.data.tokenizer import CharTokenizer
    >>> model = tiny_teacher(head="ctc", vocab_size=29)  # CNN stride 20 samples
    >>> asr = Transcriber(model, CharTokenizer(), window_s=0.5, overlap_s=0.1)
    >>> asr.default_mode(16000 * 5), asr.frame_shift
    ('windowed', 0.00125)
    >>> with torch.no_grad():
    ...     plain = asr.log_probs(torch.randn(16000), mode="plain")
    >>> tuple(plain.shape)
    (799, 29)
    """

    def __init__(self, model, tokenizer, device="cpu", window_s=DEFAULT_WINDOW_S,
                 overlap_s=DEFAULT_OVERLAP_S, cnn_block_s=DEFAULT_CNN_BLOCK_S,
                 encoder_block=DEFAULT_ENCODER_BLOCK,
                 projection_cache_mb=DEFAULT_PROJECTION_CACHE_MB,
                 norm_window_s=DEFAULT_NORM_WINDOW_S,
                 info=None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.info = dict(info or {})
        config = base_model(model).config
        vocab = getattr(model, "lm_head", None)
        if vocab is None:
            raise ConfigError(f"{type(model).__name__} has no CTC head (lm_head); "
                              "Transcriber needs a ...ForCTC model or a student of one")
        if vocab.out_features != len(tokenizer):
            raise ConfigError(
                f"the model has {vocab.out_features} outputs but the tokenizer "
                f"{len(tokenizer)} units; package the model with the tokenizer it was "
                "trained with"
            )
        self.receptive_field, self.stride = cnn_geometry(config)
        self.frame_shift = self.stride / SAMPLE_RATE
        if window_s * SAMPLE_RATE < self.receptive_field:
            raise ConfigError(f"window_s={window_s} is shorter than one frame")
        if overlap_s < 0:
            raise ConfigError(f"overlap_s must be >= 0, got {overlap_s}")
        self.window_s = float(window_s)
        self.overlap_s = float(overlap_s)
        self.window_frames = int(frame_lengths(model, int(window_s * SAMPLE_RATE)))
        self.context_frames = int(round(overlap_s / self.frame_shift))
        if self.window_frames - 2 * self.context_frames < 1:
            raise ConfigError(
                f"window_s={window_s} must be longer than twice overlap_s={overlap_s}"
            )
        self.cnn_block = max(1, int(cnn_block_s * SAMPLE_RATE) // self.stride)
        self.encoder_block = int(encoder_block)
        if projection_cache_mb < 0:
            raise ConfigError(f"projection_cache_mb must be >= 0, got {projection_cache_mb}")
        self.projection_cache_mb = float(projection_cache_mb)
        if norm_window_s is not None and norm_window_s < 0:
            raise ConfigError(f"norm_window_s must be >= 0 (0: whole file), got {norm_window_s}")
        self.norm_window_s = float(norm_window_s) if norm_window_s else None
        self.norm_blocks = (None if self.norm_window_s is None else
                            max(1, round(self.norm_window_s / cnn_block_s)))
        self.linear, self.max_frames = _length_limits(model)
        self.dtype = next(model.parameters()).dtype
        enable_feature_input(self.model)

    @classmethod
    def from_pretrained(cls, folder, device="cpu", **kwargs):
        """Loads a packaged model folder (student or teacher) and its tokenizer.

        Arguments
        ---------
        folder : str or os.PathLike
            ``config.json`` + ``model.safetensors`` + ``tokenizer.json`` (+
            ``cald_info.json``), as written by :func:`cald_speech.experiment.package_model`.
        device : str
            Where to run.
        **kwargs
            Passed to :class:`Transcriber` (``window_s``, ``overlap_s``, ...).

        Raises
        ------
        DataError, ConfigError
            Missing files, a model without a CTC head, a tokenizer that does not fit.
        """
        from cald_speech.data.tokenizer import load_tokenizer
        from cald_speech.intent import is_intent_model

        folder = Path(folder)
        if is_intent_model(folder):
            raise ConfigError(
                f"{folder} holds an intent model; use Classifier.from_pretrained(folder)"
                ".classify_file(...) (cald-transcribe does so by itself)"
            )
        config = read_config(folder)
        task = model_task(config)
        if task != "ctc":
            raise ConfigError(
                f"{folder} holds {'an' if task[0] in 'aeiou' else 'a'} {task} model "
                "(no CTC head); Transcriber needs a CTC model: fine-tune it first "
                "(recipes/LibriSpeech/ASR), or classify with an intent model"
            )
        if not (folder / "tokenizer.json").is_file():
            raise DataError(folder, "no tokenizer.json in the model folder",
                            "package the model with cald_speech.experiment.package_model")
        tokenizer = load_tokenizer(folder / "tokenizer.json")
        info = {}
        if (folder / "cald_info.json").is_file():
            try:
                info = json.loads((folder / "cald_info.json").read_text())
            except ValueError:
                info = {}
        model = load_model(folder, device=device)
        return cls(model, tokenizer, device=device, info=info, **kwargs)

    # ------------------------------------------------------------------ modes
    def default_mode(self, num_samples):
        """``"one-pass"`` for linear students, else ``"plain"`` within one window or
        ``"windowed"`` beyond it."""
        if self.linear and self._fits(int(frame_lengths(self.model, num_samples))):
            return "one-pass"
        if num_samples <= self.window_s * SAMPLE_RATE:
            return "plain"
        return "windowed"

    def _fits(self, frames):
        return self.max_frames is None or frames <= self.max_frames

    def _resolve(self, mode, num_samples):
        if mode not in MODES:
            raise ConfigError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
        mode = self.default_mode(num_samples) if mode == "auto" else mode
        frames = int(frame_lengths(self.model, num_samples))
        if mode == "windowed":
            frames = min(frames, self.window_frames)  # a window's context included
        if not self._fits(frames):
            limit_s = self.max_frames * self.stride / SAMPLE_RATE
            fix = f"use --mode windowed with --chunk-s at most {limit_s:.1f}"
            raise ConfigError(
                f"this model's layers take at most {self.max_frames} frames "
                f"({limit_s:.1f} s of audio) in one pass; {mode} mode would give them "
                f"{frames} frames; fix: {fix}, or convert with a larger max_len"
            )
        return mode

    # ------------------------------------------------------------------ posteriors
    def _logits(self, inputs, attention_mask=None):
        out = self.model(inputs, attention_mask=attention_mask)
        return out.logits

    def log_probs(self, wav, mode="auto", progress=False):
        """Frame log posteriors (T, V) of a 16 kHz mono waveform, on the CPU.

        Arguments
        ---------
        wav : torch.Tensor
            (N,) waveform at 16 kHz.
        mode : str
            ``"auto"``, ``"one-pass"``, ``"windowed"`` or ``"plain"`` (module doc).
        progress : bool or None
            Progress bars (``None``: only on a terminal).
        """
        wav = torch.as_tensor(wav).reshape(-1)
        n = wav.numel()
        mode = self._resolve(mode, n)
        vocab = len(self.tokenizer)
        if n < self.receptive_field:
            return torch.zeros(0, vocab)
        total = int(frame_lengths(self.model, n))
        with torch.inference_mode():
            if mode == "plain":
                logits = self._logits(wav[None].to(self.device, self.dtype))[0]
            elif mode == "one-pass":
                logits = self._one_pass(wav, progress)
            else:
                logits = self._windowed(wav, total, progress)
            if logits.shape[0] != total:  # pragma: no cover - would be a bug
                raise RuntimeError(f"{logits.shape[0]} frames of posteriors, expected {total}")
            return torch.log_softmax(logits.float(), dim=-1).cpu()

    def _one_pass(self, wav, progress):
        layers = len(encoder_layers(self.model))
        bar = _progress_bar(progress, _cnn_blocks(self.model, wav.numel(), self.cnn_block),
                            "CNN", "block")
        try:
            feats = cnn_features(self.model, wav, self.cnn_block, progress=bar,
                                 norm_blocks=self.norm_blocks)
        finally:
            bar.close()
        bar = _progress_bar(progress, layers, "encoder", "layer")
        try:
            with long_form(self.model, self.encoder_block, progress=bar,
                           projection_cache_mb=self.projection_cache_mb):
                return self._logits(feats[None])[0]
        finally:
            bar.close()

    def _windowed(self, wav, total, progress):
        plan = window_plan(total, self.window_frames, self.context_frames)
        bar = _progress_bar(progress if len(plan) > 1 else False, len(plan), "windows", "win")

        def run():
            n = wav.numel()
            for start, end, _, _ in plan:
                stop = n if end == total else (end - 1) * self.stride + self.receptive_field
                feats = cnn_features(self.model, wav[start * self.stride:stop], self.cnn_block)
                yield self._logits(feats[None])[0]
                bar.update(1)

        try:
            return stitch(plan, run())
        finally:
            bar.close()

    # ------------------------------------------------------------------ transcripts
    def _transcript(self, wav, meta, mode, timestamps, progress):
        n = wav.numel()
        duration = n / SAMPLE_RATE
        base = dict(duration=duration, sample_rate=meta.get("sample_rate", SAMPLE_RATE),
                    channels=meta.get("channels", 1), path=meta.get("path"))
        if n == 0 or float(wav.abs().max()) < SILENCE_PEAK:
            return Transcript("", [], mode="silent", **base)
        mode = self._resolve(mode, n)
        if progress is None and duration < PROGRESS_AFTER_S:
            progress = False
        lp = self.log_probs(wav, mode=mode, progress=progress)
        return self._decode(lp, duration, timestamps, mode, base)

    def _decode(self, lp, duration, timestamps, mode, base):
        if timestamps:
            text, words = align_words(lp, self.tokenizer, self.frame_shift, duration)
        else:
            text, words = self.tokenizer.decode_ctc(lp.argmax(-1)), []
        return Transcript(text, words, mode=mode, **base)

    @staticmethod
    def _as_waveform(wav, sample_rate):
        wav = torch.as_tensor(np.asarray(wav) if not torch.is_tensor(wav) else wav)
        wav = wav.float()
        channels = 1
        if wav.dim() == 2:
            channels = wav.shape[0]
            wav = wav.mean(dim=0)
        elif wav.dim() != 1:
            raise ConfigError(f"expected a (samples,) or (channels, samples) waveform, got "
                              f"shape {tuple(wav.shape)}")
        check_finite("<waveform>", wav.numpy())
        if sample_rate != SAMPLE_RATE:
            wav = resample(wav, sample_rate, SAMPLE_RATE)
        return wav, {"sample_rate": int(sample_rate), "channels": channels}

    def transcribe_waveform(self, wav, sample_rate=SAMPLE_RATE, mode="auto", timestamps=True,
                            progress=None):
        """Transcribes a waveform held in memory.

        Arguments
        ---------
        wav : torch.Tensor or numpy.ndarray
            (N,) mono or (channels, N) audio.
        sample_rate : int
            Its rate (resampled to 16 kHz).
        mode : str
            See the module doc; ``"auto"`` picks one-pass for linear students and
            windows (beyond ``window_s``) for the rest.
        timestamps : bool
            Align words (start, end, confidence).
        progress : bool or None
            Progress bars; ``None``: on a terminal, for audio over a minute.

        Returns
        -------
        Transcript
        """
        wav, meta = self._as_waveform(wav, sample_rate)
        return self._transcript(wav, meta, mode, timestamps, progress)

    def transcribe_file(self, path, mode="auto", timestamps=True, progress=None):
        """Transcribes an audio file of any length, format, rate and channel count.

        Arguments
        ---------
        path : str or os.PathLike
            The file.
        mode, timestamps, progress
            As in :meth:`transcribe_waveform`.

        Returns
        -------
        Transcript
            ``sample_rate`` and ``channels`` are the file's own.

        Raises
        ------
        AudioError
            Missing, a directory, empty, truncated, not audio or undecodable.
        """
        wav, meta = read_mono(path)
        meta["path"] = str(path)
        return self._transcript(wav, meta, mode, timestamps, progress)

    def transcribe_batch(self, items, sample_rate=SAMPLE_RATE, batch_size=8, mode="auto",
                         timestamps=True, errors="raise", progress=None):
        """Transcribes several files or waveforms; short ones share padded batches.

        Inputs that fit in one window (and are not forced into windows) are batched:
        their CNN features are computed one by one (so that group-norm CNNs see each
        input alone, exactly as a single run), padded, and the encoder runs on the batch
        with its padding mask. Longer inputs go through :meth:`transcribe_waveform`.

        Arguments
        ---------
        items : list of (str, os.PathLike, torch.Tensor or numpy.ndarray)
            Files, or waveforms at ``sample_rate``.
        sample_rate : int
            Rate of the waveforms given directly.
        batch_size : int
            Inputs per padded batch.
        mode, timestamps, progress
            As in :meth:`transcribe_waveform`.
        errors : str
            ``"raise"``: the first bad file raises its :class:`AudioError`;
            ``"return"``: its place in the result holds the error and the rest goes on.

        Returns
        -------
        list of Transcript (or AudioError with ``errors="return"``)
        """
        if errors not in ("raise", "return"):
            raise ConfigError(f"errors must be 'raise' or 'return', got {errors!r}")
        results = [None] * len(items)
        pending = []
        for i, item in enumerate(items):
            try:
                if isinstance(item, (str, os.PathLike)):
                    wav, meta = read_mono(item)
                    meta["path"] = str(item)
                else:
                    wav, meta = self._as_waveform(item, sample_rate)
            except AudioError as exc:
                if errors == "raise":
                    raise
                results[i] = exc
                continue
            n = wav.numel()
            resolved = self._resolve(mode, n) if n else "plain"
            short = n <= self.window_s * SAMPLE_RATE
            silent = n == 0 or float(wav.abs().max()) < SILENCE_PEAK
            if short and not silent and resolved in ("plain", "one-pass") and \
                    n >= self.receptive_field:
                pending.append((i, wav, meta, resolved))
            else:
                results[i] = self._transcript(wav, meta, mode, timestamps, progress)
        for k in range(0, len(pending), max(1, int(batch_size))):
            chunk = pending[k:k + batch_size]
            for (i, wav, meta, resolved), lp in zip(chunk, self._batch_log_probs(chunk)):
                n = wav.numel()
                base = dict(duration=n / SAMPLE_RATE, path=meta.get("path"),
                            sample_rate=meta.get("sample_rate", SAMPLE_RATE),
                            channels=meta.get("channels", 1))
                results[i] = self._decode(lp, n / SAMPLE_RATE, timestamps, resolved, base)
        return results

    def _batch_log_probs(self, chunk):
        with torch.inference_mode():
            batch, mask, frames = padded_features(
                self.model, [wav for _, wav, _, _ in chunk], self.device, self.cnn_block)
            logits = self._logits(batch, attention_mask=mask)
            lp = torch.log_softmax(logits.float(), dim=-1).cpu()
        return [lp[j, :t] for j, t in enumerate(frames)]


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


class Classifier:
    """Spoken intent classification with a packaged intent model (student or teacher).

    Arguments
    ---------
    model : cald_speech.intent.IntentModel
        The model (its encoder a student or a transformer).
    device : str or torch.device
        Where to run.

    Example
    -------
    >>> import tempfile, torch
    >>> from cald_speech.convert import tiny_teacher
    >>> from cald_speech.intent import IntentModel, LabelMaps
    >>> labels = LabelMaps({"alarm_set": ("alarm", "set"), "play_music": ("play", "music")})
    >>> folder = tempfile.mkdtemp()
    >>> IntentModel.new(tiny_teacher(), labels).save_pretrained(folder)
    >>> clf = Classifier.from_pretrained(folder)
    >>> out = clf.classify_waveform(torch.randn(2, 22050), sample_rate=44100)
    >>> out["scenario"] in ("alarm", "play"), out["sample_rate"], out["channels"]
    (True, 44100, 2)
    >>> sorted(out["confidence"])
    ['action', 'scenario']
    """

    def __init__(self, model, device="cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        enable_feature_input(self.model.encoder)

    @classmethod
    def from_pretrained(cls, folder, device="cpu"):
        """Loads a folder written by :meth:`cald_speech.intent.IntentModel.save_pretrained`.

        Raises
        ------
        ConfigError
            The folder holds a CTC model (use :class:`Transcriber`).
        DataError
            Missing or unreadable files.
        """
        from cald_speech.intent import IntentModel, is_intent_model

        folder = Path(folder)
        if not is_intent_model(folder) and (folder / "config.json").is_file():
            raise ConfigError(f"{folder} holds a {model_task(read_config(folder))} model, "
                              "not an intent model; use Transcriber for CTC models")
        return cls(IntentModel.from_pretrained(folder, device=device), device=device)

    @torch.inference_mode()
    def _classify(self, waveforms):
        """Labels and confidences (softmax probability of each chosen label).

        The CNN runs on each waveform alone (group-norm front ends would otherwise see
        the padding), then the features share one padded batch.
        """
        x, mask, _ = padded_features(self.model.encoder, waveforms, self.device)
        logits = self.model(x, attention_mask=mask).logits
        labels = self.model.predict(logits)
        probs = {t: p.float().softmax(-1) for t, p in self.model.split_logits(logits).items()}
        for i, lab in enumerate(labels):
            lab["confidence"] = {
                t: float(p[i, self.model.labels.index(t, lab[t])]) for t, p in probs.items()
            }
        return labels

    def classify_waveform(self, wav, sample_rate=SAMPLE_RATE):
        """Intent, scenario, action and confidences of one waveform held in memory.

        Arguments
        ---------
        wav : torch.Tensor or numpy.ndarray
            (N,) mono or (channels, N) audio.
        sample_rate : int
            Its rate (resampled to 16 kHz; the original is reported).
        """
        wav, meta = Transcriber._as_waveform(wav, sample_rate)
        if wav.numel() == 0:
            raise AudioError("<waveform>", "empty waveform", "give at least a few samples")
        out = self._classify([wav])[0]
        return {**out, **meta, "duration": wav.numel() / SAMPLE_RATE}

    def classify_file(self, path):
        """Intent, scenario, action and confidences of an audio file of any format.

        Raises
        ------
        AudioError
            Missing, a directory, empty, truncated, not audio or undecodable.
        """
        wav, meta = read_mono(path)
        out = self._classify([wav])[0]
        return {**out, "path": str(path), "sample_rate": meta["sample_rate"],
                "channels": meta["channels"], "duration": wav.numel() / SAMPLE_RATE}

    def classify_batch(self, paths, batch_size=8, errors="raise"):
        """Classifies several files in padded batches.

        Arguments
        ---------
        paths : list of str
            Audio files.
        batch_size : int
            Files per batch.
        errors : str
            ``"raise"``, or ``"skip"``: a bad file gets ``{"path", "error"}`` and the
            others go on.
        """
        results = [None] * len(paths)
        loaded = []
        for i, path in enumerate(paths):
            try:
                wav, meta = read_mono(path)
            except AudioError as exc:
                if errors != "skip":
                    raise
                results[i] = {"path": str(path), "error": str(exc)}
                continue
            loaded.append((i, wav, meta))
        loaded.sort(key=lambda t: t[1].numel())   # similar lengths share a batch
        for start in range(0, len(loaded), batch_size):
            chunk = loaded[start:start + batch_size]
            for (i, wav, meta), lab in zip(chunk, self._classify([w for _, w, _ in chunk])):
                results[i] = {**lab, "path": str(paths[i]), "sample_rate": meta["sample_rate"],
                              "channels": meta["channels"],
                              "duration": wav.numel() / SAMPLE_RATE}
        return results


def build_parser():
    """The ``cald-transcribe`` argument parser."""
    p = argparse.ArgumentParser(
        prog="cald-transcribe",
        description=(
            "Transcribe audio files of any length, format, rate and channel count with a "
            "packaged cald-speech model (student or teacher). Students whose layers are all "
            "linear-time mixers read a whole file in one pass; other models read it in "
            "overlapping windows. Exit status: the number of files that failed (0 = all "
            "transcribed; capped at 255); 2 also for a usage error."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="packaged model folder (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--format", default="txt", choices=FORMATS,
                   help="txt (text), json (words with start/end/confidence) or srt subtitles")
    p.add_argument("--output-dir", metavar="D", default=None,
                   help="write <name>.<format> per file here (default: print to stdout)")
    p.add_argument("--chunk-s", type=float, default=DEFAULT_WINDOW_S, metavar="S",
                   help=f"window length in seconds for windowed models (default "
                        f"{DEFAULT_WINDOW_S:g})")
    p.add_argument("--overlap-s", type=float, default=DEFAULT_OVERLAP_S, metavar="S",
                   help=f"context in seconds on each side of a window (default "
                        f"{DEFAULT_OVERLAP_S:g})")
    p.add_argument("--norm-window-s", type=float, default=DEFAULT_NORM_WINDOW_S, metavar="S",
                   help="one-pass mode, group-norm CNN: normalise each stretch of audio with "
                        f"the statistics of the S seconds around it (default "
                        f"{DEFAULT_NORM_WINDOW_S:g}; 0: the whole file)")
    p.add_argument("--projection-cache-mb", type=float, default=DEFAULT_PROJECTION_CACHE_MB,
                   metavar="MB",
                   help="one-pass mode, shared-projection student: memory for input "
                        "projections reused by the backward scan (default "
                        f"{DEFAULT_PROJECTION_CACHE_MB:g}; 0: recompute them, slower)")
    p.add_argument("--mode", default="auto", choices=MODES,
                   help="auto: one-pass for linear students, windows for the rest")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--no-timestamps", action="store_true", help="skip the word alignment")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _output_name(path, fmt, used):
    stem = Path(path).stem or "audio"
    name = f"{stem}.{fmt}"
    k = 1
    while name in used:
        k += 1
        name = f"{stem}-{k}.{fmt}"
    used.add(name)
    return name


def _intent_line(r):
    conf = min(r["confidence"].values()) if r.get("confidence") else float("nan")
    return f"{r['intent']}\t{r['scenario']}\t{r['action']}\t{conf:.3f}"


def _classify_main(args, cap):
    """``cald-transcribe`` with an intent model: one label line (or JSON) per file."""
    if args.format == "srt":
        print("cald-transcribe: error: --format srt needs a CTC model; intent models "
              "give txt or json", file=sys.stderr)
        return 2
    try:
        clf = Classifier.from_pretrained(args.model, device=args.device)
    except CaldError as exc:
        print(f"cald-transcribe: error: cannot load the model: {exc}", file=sys.stderr)
        return min(len(args.files), cap)
    failed = 0
    for r in clf.classify_batch(args.files, errors="skip"):
        if "error" in r:
            print(f"cald-transcribe: error: {r['error']}", file=sys.stderr)
            failed += 1
        elif args.format == "json":
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(f"{r['path']}\t{_intent_line(r)}\n")
    sys.stdout.flush()
    if failed:
        print(f"cald-transcribe: {failed} of {len(args.files)} file(s) failed",
              file=sys.stderr)
    return min(failed, cap)


def main(argv=None):
    """Entry point of ``cald-transcribe``; returns the exit status.

    With an intent model folder (the SLURP recipe's ``model/``) each file gets a line
    ``FILE<TAB>intent<TAB>scenario<TAB>action<TAB>confidence`` (txt) or a JSON object.

    Every file is tried; a bad one prints ``cald-transcribe: error: <file>: <problem>
    (fix: ...)`` on stderr and the others go on. The exit status is the number of
    files that failed, capped at 255 (0 when all were transcribed; when the model
    cannot be loaded, every file counts as failed).

    Without ``--output-dir`` the results go to stdout: for one file, the formatted
    result alone; for several, ``FILE<TAB>text`` lines (txt), one JSON object per line
    (json) or ``==> FILE <==`` headed blocks (srt).

    Example
    -------
    >>> main(["--help"])  # doctest: +ELLIPSIS
    usage: cald-transcribe ...
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    files = args.files
    cap = 255
    if args.output_dir:
        out = Path(args.output_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file of that name, or no permission
            problem = "is a file, not a folder" if out.is_file() else f"cannot be created ({exc})"
            print(f"cald-transcribe: error: --output-dir {out} {problem}; fix: name a folder",
                  file=sys.stderr)
            return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' own "Loading weights" bar
    from cald_speech.intent import is_intent_model

    if is_intent_model(args.model):
        return _classify_main(args, cap)
    try:
        asr = Transcriber.from_pretrained(args.model, device=args.device,
                                          window_s=args.chunk_s, overlap_s=args.overlap_s,
                                          norm_window_s=args.norm_window_s,
                                          projection_cache_mb=args.projection_cache_mb)
    except CaldError as exc:
        print(f"cald-transcribe: error: cannot load the model: {exc}", file=sys.stderr)
        return min(len(files), cap)
    out_dir = Path(args.output_dir) if args.output_dir else None
    used = set()
    failed = 0
    many = len(files) > 1
    for path in files:
        try:
            result = asr.transcribe_file(
                path, mode=args.mode, timestamps=not args.no_timestamps,
                progress=False if args.no_progress else None,
            )
        except CaldError as exc:
            print(f"cald-transcribe: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        text = result.format(args.format)
        if out_dir is not None:
            target = out_dir / _output_name(path, args.format, used)
            try:
                target.write_text(text, encoding="utf-8")
            except OSError as exc:
                print(f"cald-transcribe: error: {target}: cannot write ({exc})", file=sys.stderr)
                failed += 1
                continue
            print(f"{path} -> {target}", file=sys.stderr)
        elif not many:
            sys.stdout.write(text)
        elif args.format == "txt":
            sys.stdout.write(f"{path}\t{result.text}\n")
        elif args.format == "json":
            sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(f"==> {path} <==\n{text}\n")
        sys.stdout.flush()
    if failed:
        print(f"cald-transcribe: {failed} of {len(files)} file(s) failed", file=sys.stderr)
    return min(failed, cap)


if __name__ == "__main__":
    sys.exit(main())
