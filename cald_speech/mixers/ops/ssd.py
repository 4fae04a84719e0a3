"""Mamba2's SSD scan: a chunked pure-PyTorch kernel, a sequential reference, one dispatch.

The state-space recurrence computed here (per batch row, per head ``h``) is::

    dt_t  = clamp(softplus(dt_t + dt_bias))            (softplus and bias optional)
    S_t   = exp(dt_t * A_h) * S_{t-1} + dt_t * x_t B_t^T  (S: headdim x d_state)
    y_t   = S_t C_t + D_h * x_t                         (then y_t * silu(z_t) if z given)

with ``B`` and ``C`` shared by the heads of a group. The argument names, shapes and
semantics are those of ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined``
so that :func:`ssd_scan` can hand the same call to the fused Triton kernel on a CUDA
device and to :func:`ssd_chunk_scan_torch` everywhere else.

Shapes: ``x`` (b, l, h, p), ``dt`` (b, l, h), ``A`` (h,), ``B``/``C`` (b, l, g, n),
``D`` (h,) or (h, p), ``z`` (b, l, h, p), ``initial_states`` (b, h, p, n).

Example
-------
>>> import torch
>>> b, l, h, p, g, n = 1, 10, 2, 4, 1, 3
>>> x, dt = torch.randn(b, l, h, p), torch.rand(b, l, h)
>>> A, B, C = -torch.rand(h), torch.randn(b, l, g, n), torch.randn(b, l, g, n)
>>> y, state = ssd_scan(x, dt, A, B, C, chunk_size=4, return_final_states=True)
>>> y.shape, state.shape
(torch.Size([1, 10, 2, 4]), torch.Size([1, 2, 4, 3]))
>>> ref = ssd_sequential_ref(x, dt, A, B, C)
>>> bool(torch.allclose(y.double(), ref, atol=1e-5))
True
"""

import torch
import torch.nn.functional as F

from cald_speech.errors import ConfigError
from cald_speech.mixers.ops.fused import IMPL_ENV, load_kernel, resolve_impl, use_fused
from cald_speech.mixers.ops.ssd_nograd import _ssd_core_exact, ssd_core_nograd

__all__ = ["FUSED_CHUNK_SIZE", "IMPL_ENV", "TORCH_CHUNK_SIZE", "fused_scan_available",
           "fused_scan_dtype", "resolve_impl", "ssd_chunk_scan_torch", "ssd_scan",
           "ssd_sequential_ref"]

#: Chunk size of the fused kernel when none is given (mamba-ssm's default).
FUSED_CHUNK_SIZE = 256
#: Chunk size of the PyTorch kernel when none is given (fastest measured on CPU).
TORCH_CHUNK_SIZE = 64


def fused_scan_available():
    """True when mamba-ssm's Triton SSD kernel can be imported (it still needs CUDA).

    Example
    -------
    >>> isinstance(fused_scan_available(), bool)
    True
    """
    return load_kernel("ssd").available


def fused_scan_dtype(x, impl=None):
    """The type the scan's ``x``, ``B`` and ``C`` take: what mamba-ssm's ``Mamba2`` hands
    the fused kernel.

    Under autocast, where the fused kernel runs (:func:`ssd_scan` with ``x``'s device
    and ``impl``), autocast's type (bfloat16 under bf16 autocast: the depthwise
    convolution's output, as ``nn.Conv1d`` gives it); ``A``, ``D``, ``dt_bias`` and
    the states stay float32. ``None`` otherwise: the PyTorch scan computes in float32
    whatever it gets, and keeps the convolution's float32 output.

    Example
    -------
    >>> fused_scan_dtype(torch.zeros(1), "torch") is None
    True
    """
    device = x.device.type
    if not torch.is_autocast_enabled(device) or not use_fused("ssd", impl, x):
        return None
    return torch.get_autocast_dtype(device)


def ssd_scan(
    x,
    dt,
    A,
    B,
    C,
    chunk_size=None,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    dt_softplus=False,
    dt_limit=(0.0, float("inf")),
    return_final_states=False,
    impl=None,
):
    """The one dispatch point of the SSD scan: fused Triton kernel or chunked PyTorch.

    ``impl="auto"`` (default, or ``$CALD_SSD_IMPL``) uses
    ``mamba_chunk_scan_combined`` when mamba-ssm is importable and the inputs are on
    CUDA, else :func:`ssd_chunk_scan_torch`; ``"torch"`` / ``"fused"`` force a path
    (forcing ``"fused"`` where it cannot run raises :class:`ConfigError`). The path
    taken is logged once per process at INFO level.

    Arguments
    ---------
    x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_limit,
    return_final_states
        As in :func:`ssd_chunk_scan_torch`.
    chunk_size : int or None
        Frames per chunk; ``None`` picks the path's own default
        (:data:`FUSED_CHUNK_SIZE` fused, :data:`TORCH_CHUNK_SIZE` PyTorch). The result
        does not depend on it beyond rounding.
    impl : str or None
        ``"auto"``, ``"torch"`` or ``"fused"``.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        ``y`` (b, l, h, p) in ``x``'s dtype, and the final states (b, h, p, n) in fp32
        if ``return_final_states``.

    Example
    -------
    >>> x, dt = torch.randn(1, 5, 2, 4), torch.rand(1, 5, 2)
    >>> A, B = -torch.rand(2), torch.randn(1, 5, 1, 3)
    >>> ssd_scan(x, dt, A, B, B, chunk_size=2, impl="torch").shape
    torch.Size([1, 5, 2, 4])
    """
    kwargs = dict(
        D=D,
        z=z,
        dt_bias=dt_bias,
        initial_states=initial_states,
        dt_softplus=dt_softplus,
        return_final_states=return_final_states,
    )
    if use_fused("ssd", impl, x):
        if tuple(dt_limit) != (0.0, float("inf")):
            kwargs["dt_limit"] = tuple(dt_limit)
        fn = load_kernel("ssd").fn
        return fn(x, dt, A, B, C, chunk_size or FUSED_CHUNK_SIZE, **kwargs)
    chunk_size = chunk_size or TORCH_CHUNK_SIZE
    return ssd_chunk_scan_torch(x, dt, A, B, C, chunk_size, dt_limit=dt_limit, **kwargs)


def _discretize_dt(dt, dt_bias, dt_softplus, dt_limit, dtype):
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)  # threshold 20, as the Triton kernel
    lo, hi = dt_limit
    if lo > 0.0 or hi != float("inf"):
        dt = dt.clamp(min=lo, max=hi)
    return dt


def _pad_time(t, length, inplace):
    """Zero-pads dim 1 of ``t`` to ``length`` frames."""
    extra = length - t.shape[1]
    if extra == 0:
        return t
    if inplace:
        out = t.new_empty((t.shape[0], length) + t.shape[2:])
        out[:, : t.shape[1]] = t
        out[:, t.shape[1]:] = 0
        return out
    return torch.cat([t, t.new_zeros((t.shape[0], extra) + t.shape[2:])], dim=1)


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def ssd_chunk_scan_torch(
    x,
    dt,
    A,
    B,
    C,
    chunk_size=256,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    dt_softplus=False,
    dt_limit=(0.0, float("inf")),
    return_final_states=False,
):
    """Chunked SSD scan in pure PyTorch (the matrix form of Mamba2, chunk by chunk).

    Within a chunk of ``Q`` frames the output is a masked ``(Q, Q)`` attention-like
    product; between chunks only the ``(p, n)`` state per head is carried, by a loop
    over chunks (for more than 1,024 chunks, by the same chunked scan one level up).
    Cost is linear in ``l``: no ``(l, l)`` tensor is ever built. Everything is computed
    in fp32 (fp64 for fp64 inputs); ``y`` is returned in ``x``'s dtype. Without
    autograd, intermediates are updated in place.

    Numerics: inside a chunk, decay factors below ``exp(-80)`` (about 2e-35) are
    computed as ``exp(-80)``; this keeps ``exp`` off its slow underflow path and is far
    below fp32 resolution next to each frame's own (undecayed) term.

    Arguments
    ---------
    x : torch.Tensor
        (b, l, h, p) inputs.
    dt : torch.Tensor
        (b, l, h) raw time steps.
    A : torch.Tensor
        (h,) decay rates (negative for a stable recurrence).
    B, C : torch.Tensor
        (b, l, g, n) input and output projections; ``h`` must be a multiple of ``g``.
    chunk_size : int
        Frames per chunk; ``l`` need not be a multiple of it.
    D : torch.Tensor or None
        (h,) or (h, p) skip connection.
    z : torch.Tensor or None
        (b, l, h, p) gate: ``y * silu(z)``.
    dt_bias : torch.Tensor or None
        (h,) added to ``dt`` before the softplus.
    initial_states : torch.Tensor or None
        (b, h, p, n) state before the first frame.
    dt_softplus : bool
        Apply softplus to ``dt + dt_bias``.
    dt_limit : tuple of float
        Clamp range of the discretised ``dt``.
    return_final_states : bool
        Also return the state after the last frame.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        ``y`` (b, l, h, p) and, if asked, the final states (b, h, p, n).

    Example
    -------
    >>> x, dt = torch.randn(2, 7, 4, 3), torch.rand(2, 7, 4)
    >>> A, B, C = -torch.rand(4), torch.randn(2, 7, 2, 5), torch.randn(2, 7, 2, 5)
    >>> y = ssd_chunk_scan_torch(x, dt, A, B, C, chunk_size=3, D=torch.ones(4))
    >>> y.shape
    torch.Size([2, 7, 4, 3])
    """
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    if h % g:
        raise ConfigError(f"number of heads ({h}) must be a multiple of ngroups ({g})")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be positive, got {chunk_size}")
    out_dtype = x.dtype
    cd = _compute_dtype(x)
    if l == 0:
        y = x.new_zeros(x.shape)
        if not return_final_states:
            return y
        s = (x.new_zeros(b, h, p, n, dtype=cd) if initial_states is None
             else initial_states.to(cd))
        return y, s
    Q = max(min(chunk_size, l), 1)
    L = -(-l // Q) * Q
    # Without autograd, intermediates are reused in place (less memory traffic).
    inplace = not (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (x, dt, A, B, C, D, z, dt_bias, initial_states)
    ))

    dt = _discretize_dt(dt, dt_bias, dt_softplus, dt_limit, cd)  # (b, l, h)
    xf = x.to(cd)
    s0 = None if initial_states is None else initial_states.to(cd)
    # Frames past l (chunk padding) get dt = 0: no decay, no input: the final state is exact.
    dt = _pad_time(dt, L, inplace)
    dA = dt * A.to(cd)
    Bp, Cp = _pad_time(B.to(cd), L, inplace), _pad_time(C.to(cd), L, inplace)
    # A per-head D is folded into the no-grad kernel (one pass less over y).
    D_core = D.to(cd) if inplace and D is not None and D.dim() == 1 else None
    # Autocast (SpeechBrain's bf16/fp16 training) would run the matmuls below in half
    # precision; the fused kernel accumulates in fp32, and so does this path.
    with torch.autocast(x.device.type, enabled=False):
        if inplace:
            y, s = ssd_core_nograd(_pad_time(xf, L, True), dt, dA, Bp, Cp, Q, s0, D_core)
        else:
            y, s = _ssd_core(_pad_time(xf * dt[:, :l].unsqueeze(-1), L, False), dA, Bp, Cp,
                             Q, s0, False)
    y = y[:, :l]
    if D is not None and D_core is None:
        Df = D.to(cd)
        Df = Df.unsqueeze(-1) if Df.dim() == 1 else Df
        y = y.addcmul_(xf, Df) if inplace and y.is_contiguous() else y + xf * Df
    if z is not None:
        y = y * F.silu(z.to(cd))
    y = y.to(out_dtype)
    return (y, s) if return_final_states else y


#: Above this many chunks the inter-chunk recurrence is itself solved in chunks (bounds
#: the Python loop and the autograd graph for very long inputs; below it a loop over
#: chunks moves less memory and is faster).
_LOOP_MAX_CHUNKS = 1024
_INNER_CHUNK = 16
#: Tensors with fewer elements than this run element-wise ops on one thread
#: (``at::internal::GRAIN_SIZE``).
_SERIAL_NUMEL = 32768


def _chunk_views(dA, B, C, Q):
    """Per-chunk views of the autograd core.

    Returns the in-chunk cumulative log-decay ``cs`` (b, nc, Q, h), ``B`` and ``C`` as
    (b, nc, g, Q, n) (the batch of every chunk-level matmul is (b, nc, g)), and
    ``C B^T`` (b, nc, g, Q, Q) with its strict upper triangle zeroed.
    """
    b, L, h = dA.shape
    g, n = B.shape[-2:]
    nc = L // Q
    cs = torch.cumsum(dA.view(b, nc, Q, h), dim=2)
    Bc = B.view(b, nc, Q, g, n).transpose(2, 3)
    Cc = C.view(b, nc, Q, g, n).transpose(2, 3)
    if g > 1:
        Bc, Cc = Bc.contiguous(), Cc.contiguous()
    upper = torch.ones(Q, Q, dtype=torch.bool, device=dA.device).triu(1)
    CB = torch.matmul(Cc, Bc.transpose(-1, -2))
    return cs, Bc, Cc, CB.masked_fill(upper, 0.0)


def _ssd_core(xdt, dA, B, C, Q, s0, inplace):
    """The chunked scan on pre-multiplied inputs whose length is a multiple of ``Q``.

    ``xdt`` (b, L, h, p) = x * dt, ``dA`` (b, L, h) = dt * A, ``B``/``C`` (b, L, g, n),
    ``s0`` (b, h, p, n) or None. Returns ``y`` (b, L, h, p) without the D term, and the
    final state (b, h, p, n).
    """
    if inplace:
        cs = torch.cumsum(dA.view(dA.shape[0], -1, Q, dA.shape[2]), dim=2)
        return _ssd_core_exact(xdt, None, cs, B, C, Q, s0, None)
    b, L, h, p = xdt.shape
    g, n = B.shape[-2:]
    hg = h // g
    nc = L // Q
    dev, cd = xdt.device, xdt.dtype
    cs, Bc, Cc, CB = _chunk_views(dA, B, C, Q)
    xdt = xdt.view(b, nc, Q, h, p)

    # 1. Intra-chunk: Y[q] = sum_{s<=q} exp(cs_q - cs_s) (C_q . B_s) (x dt)_s.
    CB = CB.unsqueeze(3)
    cs_h = cs.transpose(2, 3).reshape(b, nc, g, hg, Q)
    M = cs_h.unsqueeze(-1) - cs_h.unsqueeze(-2)  # (b, nc, g, hg, Q, Q)
    # Clamping to [-80, 0] keeps exp() off its slow underflow path (exp(-80) ~ 2e-35 is
    # below fp32 resolution next to the diagonal term) and the masked upper triangle
    # finite; CB is already zero there.
    M = torch.exp(M.clamp(min=-80.0, max=0.0)) * CB
    X = xdt.view(b, nc, Q, g, hg, p).permute(0, 1, 3, 4, 2, 5)  # (b, nc, g, hg, Q, p)
    Y_diag = torch.matmul(M, X)  # (b, nc, g, hg, Q, p)
    del M, X

    # 2. State each chunk adds at its end: sum_q exp(cs_end - cs_q) (x dt)_q B_q^T,
    #    one (hg*p, Q) @ (Q, n) matmul per (b, chunk, group); stored (b, nc, h, p*n).
    decay_to_end = torch.exp(cs[:, :, -1:] - cs).unsqueeze(-1)  # (b, nc, Q, h, 1)
    Xd = xdt * decay_to_end
    Xd = Xd.view(b, nc, Q, g, hg * p).transpose(2, 3)  # (b, nc, g, Q, hg*p)
    states = torch.matmul(Xd.transpose(-1, -2), Bc)  # (b, nc, g, hg*p, n)
    del Xd
    states = states.view(b, nc, h, p * n)

    # 3. Inter-chunk recurrence: S_c = exp(a_c) S_{c-1} + states_c, a_c = cs[c, end].
    #    A loop over chunks; for very many chunks, the same scan one level up
    #    (B = C = 1, one "frame" per chunk).
    a = cs[:, :, -1]  # (b, nc, h)
    s_init = (torch.zeros(b, h, p * n, dtype=cd, device=dev) if s0 is None
              else s0.reshape(b, h, p * n))
    if nc > _LOOP_MAX_CHUNKS:
        incl, s_fin = _chunk_states_chunked(states, a, s_init, False)
        prev = torch.cat([s_init.unsqueeze(1), incl[:, : nc - 1]], dim=1)
    else:
        decay = torch.exp(a).unsqueeze(-1)  # (b, nc, h, 1)
        # Split by heads below the intra-op grain (each piece on one thread); unbind
        # once: indexing chunk c in the loop would make autograd write a full-size
        # gradient per chunk (quadratic in the number of chunks).
        per = max(1, (_SERIAL_NUMEL - 1) // (b * p * n))
        pieces = []
        for i in range(0, h, per):
            sl = slice(i, min(i + per, h))
            st, dc = states[:, :, sl].unbind(1), decay[:, :, sl].unbind(1)
            entering, s_part = [], s_init[:, sl]
            for c in range(nc):
                entering.append(s_part)
                s_part = torch.addcmul(st[c], s_part, dc[c])
            pieces.append((torch.stack(entering, dim=1), s_part))
        prev = torch.cat([pr for pr, _ in pieces], dim=2)
        s_fin = torch.cat([sf for _, sf in pieces], dim=1)
    del states

    # 4. Output from the state entering each chunk: exp(cs_q) C_q S^T.
    prev = prev.view(b, nc, g, hg * p, n).transpose(-1, -2)  # (b, nc, g, n, hg*p)
    Y = torch.matmul(Cc, prev).view(b, nc, g, Q, hg, p)
    decay_in = torch.exp(cs).view(b, nc, Q, g, hg, 1).transpose(2, 3)  # (b, nc, g, Q, hg, 1)
    Y_diag = Y_diag.transpose(3, 4)  # (b, nc, g, Q, hg, p)
    Y = Y * decay_in + Y_diag
    y = Y.transpose(2, 3).reshape(b, L, h, p)  # natural layout
    return y, s_fin.view(b, h, p, n)


def _chunk_states_chunked(states, a, s_init, inplace):
    """The inter-chunk recurrence solved by the chunked scan one level up.

    ``states`` (b, nc, h, m) is what each chunk adds, ``a`` (b, nc, h) each chunk's
    log-decay, ``s_init`` (b, h, m) the state before the first chunk. Returns the state
    after every chunk (b, nc, h, m) and the final one (b, h, m). B = C = 1 and one
    "frame" per chunk: a chunk of :data:`_INNER_CHUNK` chunks is one matrix product.
    """
    b, nc, h, m = states.shape
    Q2 = _INNER_CHUNK
    L2 = -(-nc // Q2) * Q2
    ones = torch.ones(b, L2, 1, 1, dtype=states.dtype, device=states.device)
    incl, s_fin = _ssd_core(_pad_time(states, L2, inplace), _pad_time(a, L2, inplace),
                            ones, ones, Q2, s_init.unsqueeze(-1), inplace)
    return incl[:, :nc], s_fin.squeeze(-1)


def ssd_sequential_ref(
    x,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    dt_softplus=False,
    dt_limit=(0.0, float("inf")),
    return_final_states=False,
):
    """Step-by-step float64 recurrence: the ground truth for the chunked kernels.

    Same arguments as :func:`ssd_chunk_scan_torch` (no ``chunk_size``); everything is
    computed and returned in float64. Differentiable, slow (a Python loop over ``l``).

    Example
    -------
    >>> x, dt = torch.randn(1, 3, 1, 2), torch.ones(1, 3, 1)
    >>> B = C = torch.ones(1, 3, 1, 1)
    >>> ssd_sequential_ref(x, dt, torch.zeros(1), B, C)[0, :, 0, 0].tolist() == (
    ...     x[0, :, 0, 0].double().cumsum(0).tolist())
    True
    """
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    hg = h // g
    f64 = torch.float64
    dt = _discretize_dt(dt, dt_bias, dt_softplus, dt_limit, f64)
    xf = x.to(f64)
    Bh = B.to(f64).repeat_interleave(hg, dim=2)  # (b, l, h, n)
    Ch = C.to(f64).repeat_interleave(hg, dim=2)
    A = A.to(f64)
    if initial_states is None:
        state = torch.zeros(b, h, p, n, dtype=f64, device=x.device)
    else:
        state = initial_states.to(f64)
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)  # (b, h)
        inp = (dt[:, t, :, None] * xf[:, t]).unsqueeze(-1) * Bh[:, t].unsqueeze(-2)
        state = decay[..., None, None] * state + inp
        ys.append((state * Ch[:, t].unsqueeze(-2)).sum(-1))
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(b, 0, h, p)
    if D is not None:
        Df = D.to(f64)
        y = y + xf * (Df.unsqueeze(-1) if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.to(f64))
    if return_final_states:
        return y, state
    return y
