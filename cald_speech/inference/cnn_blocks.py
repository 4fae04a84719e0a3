"""The CNN feature encoder over inputs of any length, in blocks of the waveform.

Output frame ``t`` of the CNN depends on exactly the samples ``[t * stride, t * stride
+ receptive_field)`` (:func:`cnn_geometry`), so blocks of the waveform that overlap by
``receptive_field - stride`` samples give exactly the frames of a one-shot run
(:func:`cnn_features`). A group-norm CNN (wav2vec2-base, ``feat_extract_norm="group"``)
normalises each channel of its first layer over the whole input; here its statistics
are gathered in a first pass, per block, and merged over the whole input or over the
blocks around each one (``norm_blocks``). :func:`padded_features` runs the CNN on each
waveform of a batch alone and pads the results.
"""

import math

import torch

from cald_speech.data.audio import SAMPLE_RATE
from cald_speech.errors import ConfigError
from cald_speech.features import base_model, frame_lengths, pad_features, waveform_settings
from cald_speech.inference.progress import NoProgress
from cald_speech.inference.settings import DEFAULT_CNN_BLOCK_S


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


def _samples(wav, lo, hi, device, dtype, affine):
    """``wav[lo:hi]`` as the model's input: normalised in float32 (``affine``), then cast."""
    x = wav[lo:hi].to(device=device, dtype=torch.float32)
    if affine is not None:  # out of place: ``x`` may be a view of the caller's waveform
        x = (x - affine[0]) * affine[1]
    return x.to(dtype)


def _group_norm_pieces(layer, wav, piece_frames, device, dtype, progress, affine=None):
    """(count, mean, M2) per channel of conv layer 0's output, per piece of the waveform.

    Pieces are disjoint runs of ``piece_frames`` layer-0 frames (the last may be
    shorter); returns ``counts`` (P,), ``means`` (P, C) and ``m2s`` (P, C) in float64.
    """
    conv = layer.conv
    k, s = conv.kernel_size[0], conv.stride[0]
    total = (wav.numel() - k) // s + 1
    starts = range(0, total, piece_frames)
    # The results are allocated before the loop: small tensors kept between the large
    # per-piece temporaries would pin the heap and make it grow piece after piece.
    counts = torch.empty(len(starts), dtype=torch.float64, device=device)
    means = torch.empty(len(starts), conv.out_channels, dtype=torch.float64, device=device)
    m2s = torch.empty_like(means)
    for i, f0 in enumerate(starts):
        f1 = min(f0 + piece_frames, total)
        x = _samples(wav, f0 * s, (f1 - 1) * s + k, device, dtype, affine)[None, None]
        h = conv(x)[0]
        var_b, mean_b = torch.var_mean(h.float(), dim=-1, correction=0)
        counts[i] = h.shape[-1]
        means[i] = mean_b
        m2s[i] = var_b * h.shape[-1]
        del x, h, var_b, mean_b
        progress.update(1)
    return counts, means, m2s


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
    sample mask (:func:`cald_speech.features.pad_features`).

    Arguments
    ---------
    model : transformers.PreTrainedModel or Student
        A wav2vec2 / HuBERT / WavLM model.
    waveforms : list of torch.Tensor
        Unpadded (N_i,) waveforms at 16 kHz.
    device : str or torch.device
        The model's device.
    block_frames : int, optional
        See :func:`cnn_features`.

    Returns
    -------
    features : torch.Tensor
        (B, C, T) zero-padded features.
    mask : torch.Tensor
        (B, N) sample mask (1 on real samples), for the encoder's frame mask.
    frames : list of int
        Valid frames per item.

    Example
    -------
    >>> from cald_speech.testing import tiny_teacher
    >>> model = tiny_teacher()
    >>> feats, mask, frames = padded_features(model, [torch.randn(800), torch.randn(500)],
    ...                                       "cpu")
    >>> tuple(feats.shape), mask.sum(-1).tolist(), frames
    ((2, 32, 39), [800, 500], [39, 24])
    """
    feats = [cnn_features(model, w.to(device), block_frames) for w in waveforms]
    batch, mask = pad_features(feats, [int(w.shape[-1]) for w in waveforms], device)
    return batch, mask, [f.shape[-1] for f in feats]


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
    A model whose waveform settings ask for ``do_normalize``
    (:func:`cald_speech.features.waveform_settings`) gets the input normalised with the
    mean and variance of the whole of ``wav`` (as transformers' feature extractor
    normalises one input), block by block, without a normalised copy of the waveform.

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
    >>> from cald_speech.testing import tiny_teacher
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
    settings = waveform_settings(model)
    affine = settings.affine(wav) if settings.do_normalize else None
    bar = progress if progress is not None else NoProgress()
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
                                        device, dtype, bar, affine)
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
            x = _samples(wav, a * stride, (b - 1) * stride + field_, device, dtype, affine)
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
