"""Bidirectional Mamba2 mixers (CALD's speech mixer), built from :mod:`cald_speech.mixers.mamba2`.

:class:`BiMamba2` (``"bimamba2"``) runs one block on the sequence and another on the
sequence with **each row's valid frames reversed** (:func:`reverse_padded`; padding
stays at the end), then sums (CALD) or averages the two. Because padding always comes
after the valid frames in both directions and both scans are causal, valid frames are
exactly those of each utterance alone; padded output frames are set to zero.

Defaults: ``expand=1``, ``d_conv=4``, ``ngroups=1`` and ``headdim = hidden_size //
num_heads`` (64 for wav2vec2 base/large) as in the paper. ``d_state`` defaults to 64,
the size the speed targets of this package are measured at; the paper used 128 (pass
``d_state=128`` to reproduce it). 64 halves the B/C rows of ``in_proj``, the state and
the scan's state FLOPs; its effect on accuracy is not established.
``chunk_size=None`` lets each kernel use its own default (256 fused, 64 on CPU, the
fastest measured there). Without autograd on CPU, sequences longer than
``inference_segment`` (2,048) frames run in pieces with the convolution and SSM states
carried: same result, intermediates of one piece only.

:class:`BiMamba2Shared` (``"bimamba2_shared"``) shares ``in_proj`` and ``out_proj``
between the directions and keeps a separate ``conv1d``, ``dt_bias``, ``A_log``, ``D`` and
``norm`` per direction; the backward branch reverses the projected features, and the two
normalised outputs are summed (or averaged) *before* the single ``out_proj``. With
``d_in = 2 d_inner + 2 ngroups d_state + nheads``:

- saves ``C (d_in + d_inner)`` weights (plus biases) and ``2 T C (d_in + d_inner)``
  FLOPs per forward pass: about half the mixer's parameters and ~45 % of its FLOPs
  (for C=768, expand 1, d_state 64, 12 heads: 3.76 M -> 1.89 M parameters and
  7.5 -> 3.8 MFLOP per frame of projections);
- costs capacity: both directions see the same x, B, C, dt and gate features; only the
  convolution, step sizes, decays, skip and norm differ. A direction can still be
  exported as a mamba-ssm ``Mamba2`` state dict with :meth:`direction_state_dict`
  (the shared projections copied; the out_proj bias then counts once per direction).

Example
-------
>>> import torch
>>> m = BiMamba2(hidden_size=16, num_heads=2, d_state=8, chunk_size=4)
>>> x = torch.randn(2, 10, 16)
>>> mask = torch.arange(10) < torch.tensor([[10], [7]])
>>> m(x, mask).shape
torch.Size([2, 10, 16])
"""

import math

import torch
from torch import nn

from cald_speech.errors import ConfigError
from cald_speech.mixers import register_mixer
from cald_speech.mixers.base import Mixer
from cald_speech.mixers.mamba2 import (
    Mamba2Block,
    _SSMCore,
)
from cald_speech.mixers.padding import lengths_from_mask, mask_padding, reverse_padded

__all__ = ["BiMamba2", "BiMamba2Shared", "reverse_padded"]

_COMBINE = ("sum", "mean")


def _attention_config(hidden_size, num_heads):
    if hidden_size % num_heads:
        raise ConfigError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    head_dim = hidden_size // num_heads
    return {"expand": 1, "headdim": head_dim, "d_state": head_dim, "ngroups": num_heads,
            "bias": True}


def _copy_attention(core, in_proj, out_proj, q_proj, k_proj, v_proj, o_proj, name, cls_name):
    """MambaInLlama mapping of Q/K/V/O onto one direction's in_proj/out_proj."""
    need = _attention_config(core.d_model, core.nheads)
    have = {"expand": core.expand, "headdim": core.headdim, "d_state": core.d_state,
            "ngroups": core.ngroups, "bias": in_proj.bias is not None}
    if have != need:
        raise ConfigError(
            f"mixer '{name}' cannot take attention weights with {have}; build it with "
            f"{need} (see {cls_name}.attention_init_config(hidden_size, num_heads))"
        )
    di, gn = core.d_inner, core.ngroups * core.d_state
    rows = {"x": (di, v_proj), "B": (2 * di, k_proj), "C": (2 * di + gn, q_proj)}
    for start, lin in rows.values():
        in_proj.weight[start:start + lin.out_features].copy_(lin.weight)
        b = lin.bias if lin.bias is not None else torch.zeros(lin.out_features)
        in_proj.bias[start:start + lin.out_features].copy_(b)
    out_proj.weight.copy_(o_proj.weight)
    if o_proj.bias is not None:
        out_proj.bias.copy_(o_proj.bias)
    else:
        out_proj.bias.zero_()


class _BiBase(Mixer):
    """The arguments, checks and config of both bidirectional mixers (see :class:`BiMamba2`).

    Subclasses build their parameters in ``_build(hidden_size, bias, kw)``, ``kw`` being
    the keyword arguments of one direction's :class:`Mamba2Block` but ``bias``.
    """

    execution_options = ("impl", "chunk_size")

    def __init__(self, hidden_size, num_heads, d_state=64, expand=1, headdim=None, ngroups=1,
                 d_conv=4, chunk_size=None, bias=False, conv_bias=True, combine="sum",
                 A_init_range=(1, 16), dt_min=0.001, dt_max=0.1,
                 dt_limit=(0.0, float("inf")), impl=None):
        super().__init__(hidden_size, num_heads)
        kw = _core_kwargs(hidden_size, num_heads, d_state, expand, headdim, ngroups, d_conv,
                          chunk_size, conv_bias, A_init_range, dt_min, dt_max, dt_limit, impl)
        self._build(hidden_size, bias, kw)
        kw.pop("d_model")
        if combine not in _COMBINE:
            raise ConfigError(f"combine must be one of {_COMBINE}, got '{combine}'")
        self.combine = combine
        # Lists, not tuples, so that the config dumps to YAML/JSON as it is; an
        # unbounded dt_limit is written as null (strict JSON has no Infinity).
        cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(bias=bias, **kw).items()}
        cfg["dt_limit"] = [None if math.isinf(v) else v for v in cfg["dt_limit"]]
        self._cfg.update(combine=combine, **cfg)

    @classmethod
    def attention_init_config(cls, hidden_size, num_heads):
        """The options with which :meth:`init_from_attention` works (MambaInLlama).

        expand=1, one SSM head per attention head (headdim = head_dim), d_state =
        head_dim, ngroups = num_heads, and in/out_proj biases.

        Example
        -------
        >>> BiMamba2.attention_init_config(768, 12)
        {'expand': 1, 'headdim': 64, 'd_state': 64, 'ngroups': 12, 'bias': True}
        """
        return _attention_config(hidden_size, num_heads)

    def _combine(self, y_f, y_b):
        y = y_f + y_b
        return 0.5 * y if self.combine == "mean" else y


def _core_kwargs(hidden_size, num_heads, d_state, expand, headdim, ngroups, d_conv,
                 chunk_size, conv_bias, A_init_range, dt_min, dt_max, dt_limit, impl):
    if headdim is None:
        if (expand * hidden_size) % num_heads:
            raise ConfigError(
                f"expand*hidden_size ({expand * hidden_size}) is not a multiple of num_heads "
                f"({num_heads}); set headdim"
            )
        headdim = expand * hidden_size // num_heads
    lo, hi = dt_limit  # null (None) bounds, as saved configs write them
    dt_limit = (0.0 if lo is None else float(lo), float("inf") if hi is None else float(hi))
    return dict(d_model=hidden_size, d_state=d_state, expand=expand, headdim=headdim,
                ngroups=ngroups, d_conv=d_conv, chunk_size=chunk_size, conv_bias=conv_bias,
                A_init_range=tuple(A_init_range), dt_min=dt_min, dt_max=dt_max,
                dt_limit=dt_limit, impl=impl)


@register_mixer
class BiMamba2(_BiBase):
    """Bidirectional Mamba2: a forward and a backward :class:`Mamba2Block`, summed.

    Arguments
    ---------
    hidden_size : int
        Model width C.
    num_heads : int
        Heads of the attention replaced (sets ``headdim`` when it is ``None``).
    d_state : int
        State size per group (default 64; the paper used 128).
    expand : int
        Inner width multiplier.
    headdim : int or None
        Channels per SSM head; ``None``: ``expand * hidden_size // num_heads``.
    ngroups : int
        Groups sharing B/C.
    d_conv : int
        Depthwise causal convolution width.
    chunk_size : int or None
        Scan chunk size; ``None``: each kernel's default.
    bias : bool
        in_proj/out_proj biases (needed by :meth:`init_from_attention`).
    conv_bias : bool
        Convolution bias.
    combine : str
        ``"sum"`` (CALD) or ``"mean"`` of the two directions.
    A_init_range, dt_min, dt_max, dt_limit
        Mamba2 initialisation and step-size clamp.
    impl : str or None
        Kernel path, see :func:`cald_speech.mixers.ops.ssd.ssd_scan`.

    Example
    -------
    >>> m = BiMamba2(32, 4, **BiMamba2.attention_init_config(32, 4))
    >>> q, k, v, o = (torch.nn.Linear(32, 32) for _ in range(4))
    >>> m.init_from_attention(q, k, v, o)
    >>> z, x, B, C, dt = m.bwd.in_proj.weight.split([32, 32, 32, 32, 4])
    >>> torch.equal(x, v.weight), torch.equal(B, k.weight), torch.equal(C, q.weight)
    (True, True, True)
    >>> m(torch.randn(2, 6, 32), torch.arange(6) < torch.tensor([[6], [4]])).shape
    torch.Size([2, 6, 32])
    """

    name = "bimamba2"

    def _build(self, hidden_size, bias, kw):
        self.fwd = Mamba2Block(bias=bias, **kw)
        self.bwd = Mamba2Block(bias=bias, **kw)

    def forward(self, hidden_states, padding_mask=None):
        """(B, T, C) and a (B, T) mask (True = valid, padding at the end) -> (B, T, C)."""
        lengths = None if padding_mask is None else lengths_from_mask(padding_mask)
        x = mask_padding(hidden_states, padding_mask)
        y_f = self.fwd(x)
        y_b = reverse_padded(self.bwd(reverse_padded(x, lengths)), lengths)
        return mask_padding(self._combine(y_f, y_b), padding_mask)

    @torch.no_grad()
    def init_from_attention(self, q_proj, k_proj, v_proj, out_proj):
        """Copies V->x, K->B, Q->C rows of in_proj and O->out_proj, in both directions.

        Needs the configuration of :meth:`attention_init_config`. z, dt, A, D, the
        convolution and the norm keep the standard Mamba2 initialisation (in_proj's z
        and dt bias rows keep ``nn.Linear``'s). A missing attention bias copies as zero.
        """
        for blk in (self.fwd, self.bwd):
            _copy_attention(blk, blk.in_proj, blk.out_proj, q_proj, k_proj, v_proj,
                            out_proj, self.name, type(self).__name__)


@register_mixer
class BiMamba2Shared(_BiBase):
    """Bidirectional Mamba2 sharing in_proj/out_proj between directions.

    Same arguments as :class:`BiMamba2`; costs and savings in the module doc.

    Example
    -------
    >>> m = BiMamba2Shared(16, 2, d_state=8)
    >>> from cald_speech.mixers.mamba2 import mamba2_param_shapes
    >>> sorted(m.direction_state_dict("bwd")) == sorted(mamba2_param_shapes(16, 8, headdim=8))
    True
    >>> m(torch.randn(1, 6, 16)).shape
    torch.Size([1, 6, 16])
    """

    name = "bimamba2_shared"

    def _build(self, hidden_size, bias, kw):
        self.fwd = _SSMCore(**kw)
        self.bwd = _SSMCore(**kw)
        self.in_proj = nn.Linear(hidden_size, self.fwd.d_in_proj, bias=bias)
        self.out_proj = nn.Linear(self.fwd.d_inner, hidden_size, bias=bias)

    def forward(self, hidden_states, padding_mask=None):
        """(B, T, C) and a (B, T) mask (True = valid, padding at the end) -> (B, T, C)."""
        lengths = None if padding_mask is None else lengths_from_mask(padding_mask)
        zxbc, dt = self.fwd.project(self.in_proj, mask_padding(hidden_states, padding_mask))
        y_f = self.fwd.ssm_pieces(zxbc, dt)
        y_b = self.bwd.ssm_pieces(reverse_padded(zxbc, lengths), reverse_padded(dt, lengths))
        y_b = reverse_padded(y_b, lengths)
        return mask_padding(self.out_proj(self._combine(y_f, y_b)), padding_mask)

    @torch.no_grad()
    def init_from_attention(self, q_proj, k_proj, v_proj, out_proj):
        """The MambaInLlama mapping of :meth:`BiMamba2.init_from_attention`, done once."""
        _copy_attention(self.fwd, self.in_proj, self.out_proj, q_proj, k_proj, v_proj,
                        out_proj, self.name, type(self).__name__)

    def direction_state_dict(self, direction):
        """A mamba-ssm ``Mamba2`` state dict of one direction (``"fwd"`` or ``"bwd"``)."""
        if direction not in ("fwd", "bwd"):
            raise ValueError(f"direction must be 'fwd' or 'bwd', got '{direction}'")
        sd = {f"in_proj.{k}": v for k, v in self.in_proj.state_dict().items()}
        sd.update(getattr(self, direction).state_dict())
        sd.update({f"out_proj.{k}": v for k, v in self.out_proj.state_dict().items()})
        return sd
