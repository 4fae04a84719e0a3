"""The encoder over a whole long sequence, block by block where that is exact.

Inside :func:`long_form`, the encoder's time-local parts (feature projection,
positional convolution, feed-forward blocks) run over blocks of frames
(:class:`_TimeBlocked`), and BiMamba2 mixers scan their sequence block by block with
their convolution and SSM states carried in both directions
(:func:`bimamba2_blockwise`): the same function as a plain call, at a fraction of its
memory, without any ``T x T`` mask.

Example
-------
>>> import torch
>>> cache = _ProjectionCache(limit_bytes=48)
>>> cache.put(0, (torch.zeros(4, 2),)); cache.put(4, (torch.zeros(4, 2),))
>>> sorted(cache.blocks), cache.bytes  # the oldest block made room for the newest
([4], 32)
"""

import contextlib

from torch import nn

from cald_speech.errors import ConfigError
from cald_speech.features import base_model
from cald_speech.inference.settings import DEFAULT_PROJECTION_CACHE_MB
from cald_speech.mixers.bimamba2 import BiMamba2, BiMamba2Shared
from cald_speech.student import MixerAttention, encoder_layers, frame_padding_mask

#: Frames per block of the encoder's time-local parts and of blockwise BiMamba2 scans.
DEFAULT_ENCODER_BLOCK = 2048


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

    ``core`` is a ``_SSMCore`` (its conv1d, dt_bias, A_log, D, norm and shapes), whose
    :meth:`~cald_speech.mixers.mamba2._SSMCore.ssm_piecewise` runs the blocks;
    ``in_proj`` / ``out_proj`` the projections (``out_proj=None``: return the normalised
    SSM output, width ``d_inner``). ``reverse`` scans from the last frame to the first.
    With ``out`` given, the result is added to it (no second full-length buffer). With a
    :class:`_ProjectionCache`, a forward scan stores each block's in_proj features in it
    and a reverse scan uses the stored ones (time-reversed) instead of recomputing them.
    """
    total = x.shape[1]
    add = out is not None
    if not add:
        width = core.d_inner if out_proj is None else out_proj.out_features
        out = x.new_empty(1, total, width)

    def features(a, b):
        cached = cache.take(a) if reverse and cache is not None else None
        if cached is not None:
            return tuple(t.flip(1) for t in cached)
        u = x[:, a:b]
        projected = core.project(in_proj, u.flip(1) if reverse else u)
        if cache is not None and not reverse:
            cache.put(a, projected)
        return projected

    return core.ssm_piecewise(total, block, features, finish=out_proj, out=out,
                              accumulate=add, reverse=reverse)


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


def _scans_blockwise(attention):
    """Whether an encoder layer's attention is a mixer :func:`bimamba2_blockwise` scans."""
    return isinstance(attention, MixerAttention) and isinstance(
        attention.mixer, (BiMamba2, BiMamba2Shared))


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
    >>> from cald_speech.student import convert
    >>> from cald_speech.testing import tiny_teacher
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
        if _scans_blockwise(att):
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


#: Encoder layers :func:`lean_ctc_logits` runs in place (post-norm: attention, residual,
#: layer norm, feed-forward, residual, final layer norm).
_POST_NORM_LAYERS = ("Wav2Vec2EncoderLayer", "HubertEncoderLayer")


def lean_supported(model):
    """Whether :func:`lean_ctc_logits` can run ``model`` (else use :func:`long_form`).

    Post-norm wav2vec2 / HuBERT CTC models and their students (wav2vec2-base and
    HuBERT-base shapes) without an adapter.
    """
    inner = base_model(model)
    cfg = inner.config
    return (type(inner).__name__ in ("Wav2Vec2Model", "HubertModel")
            and not getattr(cfg, "do_stable_layer_norm", False)
            and not getattr(cfg, "add_adapter", False)
            and getattr(model, "lm_head", None) is not None
            and all(type(layer).__name__ in _POST_NORM_LAYERS for layer in encoder_layers(model)))


def _blocks(total, block):
    return ((a, min(a + block, total)) for a in range(0, total, block))


def lean_ctc_logits(model, features, block=DEFAULT_ENCODER_BLOCK, progress=None,
                    projection_cache_mb=DEFAULT_PROJECTION_CACHE_MB):
    """CTC logits of one long utterance from its CNN features, holding few full-length copies.

    The same function as the model's forward (in eval mode, no padding), computed so that
    at most two (T, C) hidden-state tensors exist at once: the feature projection runs
    block by block and the CNN features are released (``features`` is a one-element list
    that this function empties); the positional embedding is added in place; each layer's
    residual sum, layer norms and feed-forward block are computed in place, block by
    block, into the attention output; BiMamba2 mixers scan block by block
    (:func:`bimamba2_blockwise`); other mixers run over the whole sequence. HF's forward
    keeps the normalised CNN features and three hidden-state copies alive instead.

    Arguments
    ---------
    model : transformers.PreTrainedModel or Student
        A model for which :func:`lean_supported` holds, in eval mode.
    features : list of torch.Tensor
        ``[cnn_features]``, (C_cnn, T); emptied once they are projected.
    block : int
        Frames per block.
    progress : tqdm.tqdm, optional
        Updated after each encoder layer.
    projection_cache_mb : float
        See :func:`bimamba2_blockwise`.

    Returns
    -------
    torch.Tensor
        (T, V) logits.

    Example
    -------
    >>> import torch
    >>> from cald_speech.inference.cnn_blocks import cnn_features
    >>> from cald_speech.student import convert
    >>> from cald_speech.testing import tiny_teacher
    >>> student = convert(tiny_teacher(head="ctc")).eval()
    >>> wav = torch.randn(16000)
    >>> with torch.no_grad():
    ...     plain = student(wav[None]).logits[0]
    ...     lean = lean_ctc_logits(student, [cnn_features(student, wav)], block=16)
    >>> torch.allclose(plain, lean, atol=1e-4)
    True
    """
    inner = base_model(model)
    encoder = inner.encoder
    feats = features.pop()
    total = feats.shape[-1]
    hidden = feats.new_empty(1, total, inner.config.hidden_size)
    for a, b in _blocks(total, block):
        out = inner.feature_projection(feats[:, a:b].t()[None])
        hidden[:, a:b] = out[0] if isinstance(out, tuple) else out
    del feats, out
    kernel = int(getattr(inner.config, "num_conv_pos_embeddings", 0) or 0)
    hidden.add_(_TimeBlocked(encoder.pos_conv_embed, block, kernel // 2 + 1)(hidden))
    for a, b in _blocks(total, block):
        hidden[:, a:b] = encoder.layer_norm(hidden[:, a:b])
    for layer in encoder_layers(model):
        att = layer.attention
        if _scans_blockwise(att):
            mixed = bimamba2_blockwise(att.mixer, hidden, block, projection_cache_mb)
        else:
            mixed = att(hidden)[0]
        mixed.add_(hidden)             # the residual; dropout is the identity in eval mode
        del hidden
        for a, b in _blocks(total, block):
            x = layer.layer_norm(mixed[:, a:b])
            mixed[:, a:b] = layer.final_layer_norm(x + layer.feed_forward(x))
        hidden = mixed
        if progress is not None:
            progress.update(1)
    head = model.lm_head
    logits = hidden.new_empty(total, head.out_features)
    for a, b in _blocks(total, block):
        logits[a:b] = head(hidden[0, a:b])
    return logits
