"""A Mamba2 block with mamba-ssm's parameters, and its SSM core (pieces, carried states).

:class:`Mamba2Block` has the parameters of ``mamba_ssm.modules.mamba2.Mamba2`` with the
same names and shapes (``in_proj`` rows in the order [z, x, B, C, dt], depthwise
``conv1d`` over xBC, ``dt_bias``, ``A_log``, ``D``, gated RMSNorm ``norm.weight`` with
``group_size = d_inner // ngroups`` and ``norm_before_gate=False``, ``out_proj``), so a
state dict moves between the two unchanged. Its SSD scan and depthwise convolution go
through :mod:`cald_speech.mixers.ops` (fused Triton / CUDA kernels when available,
pure PyTorch otherwise).

Example
-------
>>> import torch
>>> block = Mamba2Block(d_model=16, d_state=8, headdim=8, chunk_size=4)
>>> block(torch.randn(2, 10, 16)).shape
torch.Size([2, 10, 16])
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from cald_speech.errors import ConfigError
from cald_speech.mixers.ops.conv import causal_conv1d
from cald_speech.mixers.ops.ssd import fused_scan_dtype, ssd_scan
from cald_speech.mixers.padding import mask_padding

__all__ = ["Mamba2Block", "RMSNormGated", "mamba2_param_shapes"]


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
            dtype=fused_scan_dtype(xbc, self.impl),  # bf16 x, B, C for the fused scan
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

    def ssm_piecewise(self, total, size, features, finish=None, out=None, accumulate=False,
                      reverse=False):
        """:meth:`ssm` over consecutive pieces of a sequence, the states carried between them.

        The sequence of ``total`` frames is cut into pieces ``[a, b)`` of ``size`` frames
        (the last one shorter). Each piece's depthwise-convolution history and SSM state
        come from the piece scanned before it, so the pieces together give the result of
        one pass while intermediates only ever hold one piece.

        Arguments
        ---------
        total, size : int
            Frames of the sequence and of a piece.
        features : callable
            ``features(a, b)`` -> the in_proj features ``(zxbc, dt)`` of frames ``[a, b)``
            (see :meth:`project`), in scan order: time-reversed when ``reverse``.
        finish : callable, optional
            Applied to each piece's normalised output, e.g. ``out_proj``.
        out : torch.Tensor, optional
            (B, total, width) buffer the pieces are placed in; ``None``: one is made like
            the first piece's output.
        accumulate : bool
            Add the pieces to ``out`` instead of writing them.
        reverse : bool
            Scan the pieces from last to first, each one time-reversed (the backward
            direction of an unpadded sequence); outputs are flipped back into place.

        Returns
        -------
        torch.Tensor
            ``out``: (B, total, width).

        Example
        -------
        >>> core = _SSMCore(8, d_state=4, headdim=4, chunk_size=4)
        >>> zxbc = torch.randn(1, 10, core.d_inner + core.conv_dim)
        >>> dt = torch.randn(1, 10, core.nheads)
        >>> y = core.ssm_piecewise(10, 4, lambda a, b: (zxbc[:, a:b], dt[:, a:b]))
        >>> torch.allclose(y, core.ssm(zxbc, dt), atol=1e-5)
        True
        """
        starts = range(0, total, size)
        hist, state = None, None
        for a in reversed(starts) if reverse else starts:
            b = min(a + size, total)
            y, hist, state = self.ssm(*features(a, b), hist, state, return_states=True)
            if finish is not None:
                y = finish(y)
            if reverse:
                y = y.flip(1)
            if out is None:
                out = y.new_empty(y.shape[0], total, y.shape[2])
            if accumulate:
                out[:, a:b] += y
            else:
                out[:, a:b] = y
        return out

    def ssm_pieces(self, zxbc, dt):
        """:meth:`ssm` over the whole sequence; without autograd on CPU it runs in pieces
        of ``inference_segment`` frames with the states carried (same result, far
        smaller intermediates)."""
        T = zxbc.shape[1]
        if not self._segmented(T, zxbc.device):
            return self.ssm(zxbc, dt)
        return self.ssm_piecewise(T, self.inference_segment,
                                  lambda a, b: (zxbc[:, a:b], dt[:, a:b]))


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
    bias : bool
        Biases of in_proj and out_proj.

    Other Parameters
    ----------------
    A_init_range : tuple
        ``A`` uniform in this range at init (``A_log = log A``).
    dt_min, dt_max, dt_init_floor : float
        Log-uniform init range of the step size, and its floor.
    dt_limit : tuple
        Clamp range of the step size.
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
        return self.ssm_piecewise(T, self.inference_segment,
                                  lambda a, b: self.project(self.in_proj, u[:, a:b]),
                                  finish=self.out_proj)
