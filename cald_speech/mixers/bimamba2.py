"""Bidirectional Mamba2 mixers (CALD's speech mixer) and a mamba-ssm-compatible block.

:class:`Mamba2Block` has the parameters of ``mamba_ssm.modules.mamba2.Mamba2`` with the
same names and shapes (``in_proj`` rows in the order [z, x, B, C, dt], depthwise
``conv1d`` over xBC, ``dt_bias``, ``A_log``, ``D``, gated RMSNorm ``norm.weight`` with
``group_size = d_inner // ngroups`` and ``norm_before_gate=False``, ``out_proj``), so a
state dict moves between the two unchanged. Its SSD scan and depthwise convolution go
through :mod:`cald_speech.mixers.ops` (fused Triton / CUDA kernels when available,
pure PyTorch otherwise).

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
import torch.nn.functional as F
from torch import nn

from cald_speech.errors import ConfigError
from cald_speech.mixers import register_mixer
from cald_speech.mixers.base import Mixer
from cald_speech.mixers.ops.conv import causal_conv1d
from cald_speech.mixers.ops.ssd import ssd_scan
from cald_speech.mixers.padding import lengths_from_mask, mask_padding, reverse_padded

__all__ = [
    "BiMamba2",
    "BiMamba2Shared",
    "Mamba2Block",
    "RMSNormGated",
    "mamba2_param_shapes",
    "reverse_padded",
]

_COMBINE = ("sum", "mean")


def _upcast(t):
    """fp16/bf16 -> fp32; fp32 and fp64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def mamba2_param_shapes(
    d_model, d_state=64, d_conv=4, expand=1, headdim=64, ngroups=1, bias=False, conv_bias=True
):
    """Names and shapes of the parameters of mamba-ssm's ``Mamba2`` (from its formulas).

    Arguments
    ---------
    d_model, d_state, d_conv, expand, headdim, ngroups, bias, conv_bias
        As in ``mamba_ssm.modules.mamba2.Mamba2``.

    Returns
    -------
    dict
        ``{name: shape}``.

    Example
    -------
    >>> mamba2_param_shapes(16, d_state=8, headdim=8)["in_proj.weight"]
    (50, 16)
    """
    d_inner = expand * d_model
    nheads = d_inner // headdim
    d_in_proj = 2 * d_inner + 2 * ngroups * d_state + nheads
    conv_dim = d_inner + 2 * ngroups * d_state
    shapes = {
        "in_proj.weight": (d_in_proj, d_model),
        "conv1d.weight": (conv_dim, 1, d_conv),
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }
    if bias:
        shapes["in_proj.bias"] = (d_in_proj,)
        shapes["out_proj.bias"] = (d_model,)
    if conv_bias:
        shapes["conv1d.bias"] = (conv_dim,)
    return shapes


class RMSNormGated(nn.Module):
    """Gated RMSNorm of mamba-ssm (``norm_before_gate=False``: ``rms(y * silu(z)) * w``).

    The RMS is taken over groups of ``group_size`` channels; computed in fp32 (fp64 for
    fp64 inputs), returned in ``y``'s dtype.

    Arguments
    ---------
    hidden_size : int
        Channels.
    eps : float
        Added to the mean square.
    group_size : int or None
        Channels per normalisation group (``None``: all).
    norm_before_gate : bool
        ``True``: ``rms(y) * w * silu(z)``.

    Example
    -------
    >>> norm = RMSNormGated(4, group_size=2)
    >>> norm(torch.ones(1, 4), torch.full((1, 4), 20.0)).tolist()
    [[1.0, 1.0, 1.0, 1.0]]
    """

    def __init__(self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=False):
        super().__init__()
        self.eps = eps
        self.group_size = group_size or hidden_size
        if hidden_size % self.group_size:
            raise ConfigError(f"norm group size {group_size} must divide {hidden_size}")
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, y, z=None):
        """Normalises ``y`` (..., hidden_size), gated by ``z`` (same shape) if given."""
        dtype = y.dtype
        y = _upcast(y)
        # Without autograd, work in place on tensors created here (fewer memory passes).
        fast = not torch.is_grad_enabled()
        owned = False
        if z is not None and not self.norm_before_gate:
            if fast:
                y, owned = F.silu(_upcast(z)).mul_(y), True
            else:
                y = y * F.silu(_upcast(z))
        shape = y.shape
        yg = y.reshape(*shape[:-1], -1, self.group_size)
        norm = torch.linalg.vector_norm(yg, dim=-1, keepdim=True)
        rstd = torch.rsqrt(norm.square() / self.group_size + self.eps)  # small tensor
        w = self.weight.to(y.dtype).view(-1, self.group_size)
        if fast and owned:
            y = yg.mul_(rstd).mul_(w).reshape(shape)
        else:
            y = (yg * rstd * w).reshape(shape)
        if z is not None and self.norm_before_gate:
            y = y * F.silu(_upcast(z))
        return y.to(dtype)


class _SSMCore(nn.Module):
    """The per-direction part of a Mamba2 block: conv1d, dt_bias, A_log, D, norm."""

    #: Piece length (frames) of inference without autograd on CPU; ``None``: one pass.
    #: A multiple of the PyTorch chunk size keeps the chunk boundaries of one pass.
    inference_segment = 2048

    def __init__(
        self,
        d_model,
        d_state=64,
        d_conv=4,
        expand=1,
        headdim=64,
        ngroups=1,
        A_init_range=(1, 16),
        dt_min=0.001,
        dt_max=0.1,
        dt_init_floor=1e-4,
        dt_limit=(0.0, float("inf")),
        conv_bias=True,
        chunk_size=None,
        norm_before_gate=False,
        impl=None,
    ):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.ngroups = ngroups
        if self.d_inner % headdim:
            raise ConfigError(
                f"expand*d_model ({self.d_inner}) must be a multiple of headdim ({headdim})"
            )
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ConfigError(f"heads ({self.nheads}) must be a multiple of ngroups ({ngroups})")
        self.dt_limit = tuple(dt_limit)
        self.chunk_size = chunk_size
        self.impl = impl
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads

        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            kernel_size=d_conv,
            groups=self.conv_dim,
            padding=d_conv - 1,
            bias=conv_bias,
        )
        # dt log-uniform in [dt_min, dt_max], stored through the inverse softplus.
        dt = torch.exp(
            torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        if not (0 < A_init_range[0] <= A_init_range[1]):
            raise ConfigError(f"A_init_range must satisfy 0 < lo <= hi, got {A_init_range}")
        A = torch.empty(self.nheads).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = RMSNormGated(
            self.d_inner,
            eps=1e-5,
            group_size=self.d_inner // ngroups,
            norm_before_gate=norm_before_gate,
        )

    def project(self, in_proj, u):
        """``in_proj(u)`` as ``(zxbc, dt)``: (B, T, d_inner + conv_dim) and (B, T, nheads).

        On CPU the ``nheads`` step-size rows are a second, small matrix product: a
        weight of ``2 d_inner + 2 ngroups d_state`` rows (a multiple of 64 for the usual
        shapes) runs markedly faster there than one with the odd ``nheads`` rows
        appended (measured: 3,084 x 768 took 27 % longer than 3,072 x 768 on a 2-core
        EPYC). Elsewhere one product, split into views. Same values either way.
        """
        n = self.nheads
        if u.device.type != "cpu":
            out = in_proj(u)
            return out[..., :-n], out[..., -n:]
        w, bias = in_proj.weight, in_proj.bias
        return (F.linear(u, w[:-n], None if bias is None else bias[:-n]),
                F.linear(u, w[-n:], None if bias is None else bias[-n:]))

    def ssm(self, zxbc, dt, conv_history=None, ssm_state=None, return_states=False):
        """From in_proj features to the normalised SSM output (B, T, d_inner).

        ``zxbc`` (B, T, d_inner + conv_dim) and ``dt`` (B, T, nheads) are the in_proj
        features (:meth:`project`). ``conv_history`` (B, d_conv - 1, conv_dim) holds the
        pre-convolution xBC of the frames just before, and ``ssm_state`` (B, nheads,
        headdim, d_state) the state after them (both ``None`` at the start of a
        sequence). With ``return_states=True`` returns ``(y, conv_history, ssm_state)``
        for the next piece, so a sequence can be processed piece by piece with exactly
        the result of one pass.
        """
        b, t, _ = zxbc.shape
        gn = self.ngroups * self.d_state
        k = self.d_conv - 1
        z, xbc = torch.split(zxbc, [self.d_inner, self.conv_dim], dim=-1)
        if conv_history is not None:
            xbc = torch.cat([conv_history.to(xbc.dtype), xbc], dim=1)
        new_history = None
        if return_states:
            new_history = xbc[:, -k:] if k else xbc[:, :0]
            if new_history.shape[1] < k:
                new_history = F.pad(new_history, (0, 0, k - new_history.shape[1], 0))
        xbc = causal_conv1d(
            xbc.transpose(1, 2),
            self.conv1d.weight.squeeze(1),
            self.conv1d.bias,
            activation="silu",
            impl=self.impl,
        ).transpose(1, 2)
        if conv_history is not None:
            xbc = xbc[:, -t:]
        x, B, C = torch.split(xbc, [self.d_inner, gn, gn], dim=-1)
        A = -torch.exp(_upcast(self.A_log))  # fp32 (fp64 for an fp64 model)
        y = ssd_scan(
            x.reshape(b, t, self.nheads, self.headdim),
            dt,
            A,
            B.reshape(b, t, self.ngroups, self.d_state),
            C.reshape(b, t, self.ngroups, self.d_state),
            chunk_size=self.chunk_size,
            D=self.D,
            dt_bias=self.dt_bias,
            initial_states=ssm_state,
            dt_softplus=True,
            dt_limit=self.dt_limit,
            return_final_states=return_states,
            impl=self.impl,
        )
        if return_states:
            y, ssm_state = y
        y = self.norm(y.reshape(b, t, self.d_inner), z)
        return (y, new_history, ssm_state) if return_states else y

    def _segmented(self, T, device):
        seg = self.inference_segment
        return (seg is not None and T > seg and device.type == "cpu"
                and not torch.is_grad_enabled())

    def ssm_pieces(self, zxbc, dt):
        """:meth:`ssm` over the whole sequence; without autograd on CPU it runs in pieces
        of ``inference_segment`` frames with the states carried (same result, far
        smaller intermediates)."""
        T = zxbc.shape[1]
        if not self._segmented(T, zxbc.device):
            return self.ssm(zxbc, dt)
        seg = self.inference_segment
        out, hist, state = None, None, None
        for start in range(0, T, seg):
            piece = slice(start, start + seg)
            y, hist, state = self.ssm(zxbc[:, piece], dt[:, piece], hist, state, True)
            if out is None:
                out = y.new_empty(y.shape[0], T, y.shape[2])
            out[:, start:start + y.shape[1]] = y
        return out


class Mamba2Block(_SSMCore):
    """A Mamba2 block with mamba-ssm's parameter names and shapes, on any device.

    Arguments
    ---------
    d_model : int
        Input/output width.
    d_state : int
        State size per group (mamba-ssm default 128; 64 here, see the module doc).
    d_conv : int
        Depthwise convolution width.
    expand : int
        ``d_inner = expand * d_model`` (mamba-ssm default 2; 1 here as in CALD).
    headdim : int
        Channels per SSM head.
    ngroups : int
        Groups sharing B and C.
    A_init_range : tuple
        ``A`` uniform in this range at init (``A_log = log A``).
    dt_min, dt_max, dt_init_floor : float
        Log-uniform init range of the step size, and its floor.
    dt_limit : tuple
        Clamp range of the step size.
    bias : bool
        Biases of in_proj and out_proj.
    conv_bias : bool
        Bias of the depthwise convolution.
    chunk_size : int or None
        Scan chunk size (``None``: the kernel's default).
    norm_before_gate : bool
        Of the gated RMSNorm (mamba-ssm default ``False``).
    impl : str or None
        Kernel path: ``"auto"``, ``"torch"``, ``"fused"`` (default ``$CALD_SSD_IMPL``).

    Example
    -------
    >>> blk = Mamba2Block(16, d_state=8, headdim=8)
    >>> sorted(blk.state_dict()) == sorted(mamba2_param_shapes(16, d_state=8, headdim=8))
    True
    >>> blk(torch.randn(1, 5, 16)).shape
    torch.Size([1, 5, 16])
    """

    def __init__(self, d_model, d_state=64, d_conv=4, expand=1, headdim=64, ngroups=1,
                 bias=False, **kwargs):
        super().__init__(d_model, d_state=d_state, d_conv=d_conv, expand=expand,
                         headdim=headdim, ngroups=ngroups, **kwargs)
        self.in_proj = nn.Linear(d_model, self.d_in_proj, bias=bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, u, padding_mask=None):
        """(B, T, d_model) -> (B, T, d_model); padded frames (at the end) are zeroed first.

        Without autograd on CPU, sequences longer than ``inference_segment`` frames run
        in pieces with the convolution and SSM states carried: the same result, with
        intermediates of one piece instead of the whole sequence.
        """
        u = mask_padding(u, padding_mask)
        T = u.shape[1]
        if not self._segmented(T, u.device):
            return self.out_proj(self.ssm(*self.project(self.in_proj, u)))
        seg = self.inference_segment
        out, hist, state = None, None, None
        for start in range(0, T, seg):
            features = self.project(self.in_proj, u[:, start:start + seg])
            y, hist, state = self.ssm(*features, hist, state, True)
            y = self.out_proj(y)
            if out is None:
                out = y.new_empty(y.shape[0], T, y.shape[2])
            out[:, start:start + y.shape[1]] = y
        return out


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
    execution_options = ("impl", "chunk_size")

    def _set_common(self, combine, **cfg):
        if combine not in _COMBINE:
            raise ConfigError(f"combine must be one of {_COMBINE}, got '{combine}'")
        self.combine = combine
        # Lists, not tuples, so that the config dumps to YAML/JSON as it is; an
        # unbounded dt_limit is written as null (strict JSON has no Infinity).
        cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
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

    def __init__(self, hidden_size, num_heads, d_state=64, expand=1, headdim=None, ngroups=1,
                 d_conv=4, chunk_size=None, bias=False, conv_bias=True, combine="sum",
                 A_init_range=(1, 16), dt_min=0.001, dt_max=0.1,
                 dt_limit=(0.0, float("inf")), impl=None):
        super().__init__(hidden_size, num_heads)
        kw = _core_kwargs(hidden_size, num_heads, d_state, expand, headdim, ngroups, d_conv,
                          chunk_size, conv_bias, A_init_range, dt_min, dt_max, dt_limit, impl)
        self.fwd = Mamba2Block(bias=bias, **kw)
        self.bwd = Mamba2Block(bias=bias, **kw)
        kw.pop("d_model")
        self._set_common(combine, bias=bias, **kw)

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
    >>> sorted(m.direction_state_dict("bwd")) == sorted(mamba2_param_shapes(16, 8, headdim=8))
    True
    >>> m(torch.randn(1, 6, 16)).shape
    torch.Size([1, 6, 16])
    """

    name = "bimamba2_shared"

    def __init__(self, hidden_size, num_heads, d_state=64, expand=1, headdim=None, ngroups=1,
                 d_conv=4, chunk_size=None, bias=False, conv_bias=True, combine="sum",
                 A_init_range=(1, 16), dt_min=0.001, dt_max=0.1,
                 dt_limit=(0.0, float("inf")), impl=None):
        super().__init__(hidden_size, num_heads)
        kw = _core_kwargs(hidden_size, num_heads, d_state, expand, headdim, ngroups, d_conv,
                          chunk_size, conv_bias, A_init_range, dt_min, dt_max, dt_limit, impl)
        self.fwd = _SSMCore(**kw)
        self.bwd = _SSMCore(**kw)
        self.in_proj = nn.Linear(hidden_size, self.fwd.d_in_proj, bias=bias)
        self.out_proj = nn.Linear(self.fwd.d_inner, hidden_size, bias=bias)
        kw.pop("d_model")
        self._set_common(combine, bias=bias, **kw)

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
