"""The chunked SSD scan without autograd (inference): two CPU kernels behind one entry.

:func:`ssd_core_nograd` is what :func:`~cald_speech.mixers.ops.ssd.ssd_chunk_scan_torch`
runs when nothing needs gradients. Both kernels compute the same chunked scan as the
autograd path (tests compare all three with the step-by-step float64 recurrence); they
differ in how the in-chunk decay ``exp(cs_q - cs_s)`` (``cs``: the cumulative
log-decay of one head inside one chunk, ``s <= q``) reaches the products:

- **factored** (:func:`_ssd_core_factored`): ``exp(cs_q - cs_s) = exp(cs_q - r) *
  exp(r - cs_s)`` with ``r`` the midpoint of the chunk's ``cs``. The right factor
  scales the inputs, the left one the outputs, so every head of a group shares one
  ``C B^T`` and the intra-chunk term is one (Q, Q) x (Q, heads*headdim) product per
  chunk instead of a (Q, Q) decay matrix built and multiplied per head. Both factors
  stay within ``exp(range / 2)``, where ``range = max(cs) - min(cs)``; a head whose
  range exceeds :data:`FACTOR_MAX_RANGE` in any chunk ("steep": a fast decay, a
  reset) gets its intra-chunk term from its own decay matrices, as below, and shares
  the rest (states, output products) with the others.
- **exact** (:func:`_ssd_core_exact`): per group and head, the decay matrix itself,
  clamped at ``exp(-80)``, with ``dt`` and a per-head ``D`` folded into it. Used when
  more than :data:`FACTOR_MAX_STEEP` of the heads are steep.

Shapes (``L`` a multiple of ``Q``): ``x`` (b, L, h, p), ``dt`` (b, L, h) or None
(``x`` already holds ``x * dt``), ``dA`` (b, L, h), ``B``/``C`` (b, L, g, n), ``s0``
(b, h, p, n) or None, ``D`` (h,) or None. Both return ``y`` (b, L, h, p) (with
``D * x``) and the final state (b, h, p, n).

Example
-------
>>> import torch
>>> from cald_speech.mixers.ops.ssd import ssd_sequential_ref
>>> x, dt = torch.randn(1, 16, 2, 3), torch.rand(1, 16, 2)
>>> A, B, C = -torch.rand(2), torch.randn(1, 16, 1, 4), torch.randn(1, 16, 1, 4)
>>> y, s = ssd_core_nograd(x, dt, dt * A, B, C, 8, None, None)
>>> bool(torch.allclose(y.double(), ssd_sequential_ref(x, dt, A, B, C), atol=1e-5))
True
"""

import torch

__all__ = ["FACTOR_MAX_RANGE", "FACTOR_MAX_STEEP", "ssd_core_nograd", "steep_heads"]

#: Largest in-chunk decay range (in log units) the factored kernel handles: its two
#: factors stay within exp(32) ~ 8e13, far from overflow, and its error stays that of
#: the exact kernel (tests compare them at this range).
FACTOR_MAX_RANGE = 64.0
#: Above this fraction of steep heads the exact kernel runs for the whole call (each
#: steep head costs the factored kernel about what it costs the exact one).
FACTOR_MAX_STEEP = 0.5


def ssd_core_nograd(x, dt, dA, B, C, Q, s0, D):
    """The chunked scan without autograd: the factored kernel unless most heads are steep.

    Arguments and return values as in the module docstring.
    """
    cs, hi, lo = _chunk_decays(dA, Q)
    steep = _steep(hi, lo)
    if steep.float().mean().item() > FACTOR_MAX_STEEP:
        return _ssd_core_exact(x, dt, cs, B, C, Q, s0, D)
    return _ssd_core_factored(x, dt, cs, (hi + lo).mul_(0.5), steep, B, C, Q, s0, D)


def steep_heads(dA, chunk_size):
    """Which heads the factored kernel treats as steep, for log-decays ``dA`` (b, L, h).

    ``L`` must be a multiple of ``chunk_size``. A head is steep when, in some chunk, its
    cumulative log-decay spans more than :data:`FACTOR_MAX_RANGE`.

    Example
    -------
    >>> dA = -torch.ones(1, 64, 2)
    >>> dA[0, 10, 1] = -100.0
    >>> steep_heads(dA, 32).tolist()
    [False, True]
    """
    _, hi, lo = _chunk_decays(dA, chunk_size)
    return _steep(hi, lo)


def _chunk_decays(dA, Q):
    """In-chunk cumulative log-decay (b, nc, Q, h) and its max and min per chunk."""
    b, L, h = dA.shape
    cs = torch.cumsum(dA.reshape(b, L // Q, Q, h), dim=2)
    return cs, cs.amax(2), cs.amin(2)


def _steep(hi, lo):
    return ((hi - lo) > FACTOR_MAX_RANGE).flatten(0, 1).any(0)


def _state_layout(s0, g):
    """``s0`` (b, h, p, n) in the kernels' state layout (g, b, n, h/g * p); None stays."""
    if s0 is None:
        return None
    b, h, p, n = s0.shape
    return s0.reshape(b, g, h // g, p, n).permute(1, 0, 4, 2, 3).reshape(g, b, n, h // g * p)


def _final_state(s_last, hg, p):
    """The state after the last chunk, (g, b, n, hg*p), as a new (b, h, p, n) tensor."""
    g, b, n, _ = s_last.shape
    out = s_last.new_empty(b, g * hg, p, n)
    out.view(b, g, hg, p, n).copy_(s_last.view(g, b, n, hg, p).permute(1, 0, 3, 4, 2))
    return out


def _advance_states(states, a, s_init):
    """Turns what each chunk adds into the state after each chunk, in place if it can.

    ``states`` (g, b, nc, n, hg*p), ``a`` (b, nc, h) each chunk's log-decay, ``s_init``
    (g, b, n, hg*p) or None. Returns the states after every chunk (``states`` itself
    when advanced in place) and the last one, (g, b, n, hg*p). Above
    ``ssd._LOOP_MAX_CHUNKS`` chunks the recurrence is itself a chunked scan.
    """
    from cald_speech.mixers.ops import ssd  # the chunked recurrence is the autograd core's

    g, b, nc, n, hp = states.shape
    h = a.shape[-1]
    hg = h // g
    p = hp // hg
    if nc > ssd._LOOP_MAX_CHUNKS:
        # the chunked recurrence wants heads on dim 2: (b, nc, h, n*p), a copy
        init = (states.new_zeros(b, h, n * p) if s_init is None else
                s_init.view(g, b, n, hg, p).permute(1, 0, 3, 2, 4).reshape(b, h, n * p))
        by_head = states.view(g, b, nc, n, hg, p).permute(1, 2, 0, 4, 3, 5)
        incl, s_last = ssd._chunk_states_chunked(by_head.reshape(b, nc, h, n * p), a, init,
                                                 True)
        states = incl.reshape(b, nc, g, hg, n, p).permute(2, 0, 1, 4, 3, 5).reshape(
            g, b, nc, n, hp)
        return states, s_last.reshape(b, g, hg, n, p).permute(1, 0, 3, 2, 4).reshape(
            g, b, n, hp)
    decay = torch.exp(a).view(b, nc, g, hg).permute(2, 0, 1, 3)[:, :, :, None, :, None]
    sv = states.view(g, b, nc, n, hg, p)
    if s_init is not None:
        sv[:, :, 0].addcmul_(s_init.view(g, b, n, hg, p), decay[:, :, 0])
    for c in range(1, nc):
        sv[:, :, c].addcmul_(sv[:, :, c - 1], decay[:, :, c])
    return states, states[:, :, nc - 1]


def _ssd_core_factored(x, dt, cs, mid, steep, B, C, Q, s0, D):
    """The factored kernel: ``cs`` (b, nc, Q, h), ``mid`` (b, nc, h) the midpoints of
    ``cs``, ``steep`` (h,) the heads whose intra-chunk term is computed exactly.

    With ``u_q = exp(cs_q - r)``, ``w_s = exp(r' - cs_s) dt_s``, ``a = cs_end`` and
    ``P = e^r S`` the state entering a chunk, per head::

        y_q   = u_q [ sum_{s<=q} (C_q . B_s) w_s x_s + C_q P ] + D x_q
        S_out = e^{a} S + e^{a - r'} sum_s B_s w_s x_s^T

    ``r = r' = mid`` for most heads; a steep head takes ``r = 0`` and ``r' = a`` (both
    factors at most 1) and its intra-chunk sum from its own decay matrices. The states
    are advanced as ``P`` directly: ``P_c = F_c P_{c-1} + G_c sum_s B_s w_s x_s^T``
    with ``F_c = exp(r_{c+1} + a_c - r_c)``, ``G_c = exp(r_{c+1} + a_c - r'_c)`` and
    ``r = 0`` past the last chunk (so the last ``P`` is the final state).
    """
    X, Bv, Cv = _chunk_views(x, B, C, Q)
    b, nc, _, g, hg, p = X.shape
    h, n, hp = g * hg, Bv.shape[-1], hg * p
    dev, cd = x.device, x.dtype
    a = cs[:, :, -1]  # (b, nc, h)
    r_u = mid.masked_fill(steep, 0.0)
    r_w = torch.where(steep, a, mid)
    u = (cs - r_u.unsqueeze(2)).clamp_(max=FACTOR_MAX_RANGE).exp_()  # (b, nc, Q, h)
    w = (r_w.unsqueeze(2) - cs).clamp_(max=FACTOR_MAX_RANGE).exp_()
    if dt is not None:
        w.mul_(dt.view(b, nc, Q, h))
    Xw, Xw_g, states = _state_inputs(X, w, Bv)
    r_next = torch.cat([r_u[:, 1:], r_u.new_zeros(b, 1, h)], dim=1)
    states.view(g, b, nc, n, hg, p).mul_(_by_group(torch.exp(r_next + a - r_w), g))
    p_init = _state_layout(s0, g)
    if p_init is not None:
        p_init = (p_init.view(g, b, n, hg, p) * _by_group(torch.exp(r_u[:, :1]), g)[:, :, 0]
                  ).view(g, b, n, hp)
    states, p_last = _advance_states(states, r_next + a - r_u, p_init)
    s_fin = _final_state(p_last, hg, p)

    # Output: per group Z = (C B^T, lower triangle) Xw + C P_prev, y = u Z, written over
    # Xw (each group's Xw is read before it is written); steep heads read no Xw and add
    # their intra-chunk term from their decay matrices.
    steep_list = steep.nonzero().flatten().tolist()
    for hs in steep_list:
        Xw[:, :, :, hs // hg, hs % hg] = 0.0
    upper = torch.ones(Q, Q, dtype=torch.bool, device=dev).triu(1)
    CB = torch.empty(b, nc, Q, Q, dtype=cd, device=dev)
    Z = torch.empty(b, nc, Q, hp, dtype=cd, device=dev)
    uv = u.view(b, nc, Q, g, hg, 1)
    for gi in range(g):
        Cg = Cv[:, :, :, gi]
        torch.matmul(Cg, Bv[:, :, :, gi].transpose(-1, -2), out=CB)
        CB.masked_fill_(upper, 0.0)
        torch.matmul(CB, Xw_g[:, :, :, gi], out=Z)
        for bi in range(b):
            if nc > 1:
                Z[bi, 1:].baddbmm_(Cg[bi, 1:], states[gi, bi, : nc - 1])
            if p_init is not None:
                Z[bi, 0].addmm_(Cg[bi, 0], p_init[gi, bi])
        torch.mul(Z.view(b, nc, Q, hg, p), uv[:, :, :, gi], out=Xw[:, :, :, gi])
        for hs in (hs for hs in steep_list if hs // hg == gi):
            j = hs % hg
            Xw[:, :, :, gi, j] += _intra_exact(cs[..., hs], CB, dt, hs, X[:, :, :, gi, j])
    y = Xw
    if D is not None:
        y.addcmul_(X, D.view(g, hg, 1))
    return y.view(x.shape), s_fin


def _chunk_views(x, B, C, Q):
    """``x`` (b, L, h, p), ``B`` and ``C`` (b, L, g, n) as chunks of ``Q`` frames:
    (b, nc, Q, g, h/g, p) and twice (b, nc, Q, g, n)."""
    b, L, h, p = x.shape
    g, n = B.shape[-2:]
    nc = L // Q
    return (x.reshape(b, nc, Q, g, h // g, p), B.reshape(b, nc, Q, g, n),
            C.reshape(b, nc, Q, g, n))


def _state_inputs(X, w, Bv):
    """What each chunk adds to its group's state, ``B^T (x w)`` per group.

    ``X`` (b, nc, Q, g, hg, p) the inputs, ``w`` (b, nc, Q, h) their per-head weights,
    ``Bv`` (b, nc, Q, g, n). Returns the weighted inputs (contiguous), the same as
    (b, nc, Q, g, hg*p) and the states (g, b, nc, n, hg*p).
    """
    b, nc, Q, g, hg, p = X.shape
    Xw = X * w.view(b, nc, Q, g, hg, 1)
    Xw_g = Xw.view(b, nc, Q, g, hg * p)
    states = torch.empty(g, b, nc, Bv.shape[-1], hg * p, dtype=X.dtype, device=X.device)
    for gi in range(g):
        torch.matmul(Bv[:, :, :, gi].transpose(-1, -2), Xw_g[:, :, :, gi], out=states[gi])
    return Xw, Xw_g, states


def _by_group(t, g):
    """(b, nc, h) per-head factors as a (g, b, nc, 1, h/g, 1) view for the states."""
    b, nc, h = t.shape
    return t.view(b, nc, g, h // g).permute(2, 0, 1, 3)[:, :, :, None, :, None]


def _intra_exact(c, CB, dt, head, X_h):
    """One head's intra-chunk term from its decay matrices: ``c`` (b, nc, Q) its ``cs``,
    ``CB`` (b, nc, Q, Q) its group's masked ``C B^T``, ``X_h`` (b, nc, Q, p)."""
    M = torch.sub(c.unsqueeze(-1), c.unsqueeze(-2)).clamp_(-80.0, 0.0).exp_().mul_(CB)
    if dt is not None:
        M.mul_(dt.view(*c.shape, -1)[..., head].unsqueeze(-2))
    return torch.matmul(M, X_h)


def _ssd_core_exact(x, dt, cs, B, C, Q, s0, D):
    """The exact kernel: per group and head, the (Q, Q) decay matrices themselves.

    ``cs`` (b, nc, Q, h) is the in-chunk cumulative log-decay. Everything runs one
    group and one head at a time, reading ``x``, ``B`` and ``C`` where they lie
    (strided views, no permuted copies), so each head's (Q, Q) decay matrices stay in
    cache; ``dt`` and ``D`` are folded into those matrices instead of passes over
    ``x``; the chunk states are stored (g, b, nc, n, hg*p), so that both of their
    matrix products read plain rows, and advanced in place; the output is combined in
    one pass per head into the buffer of the state inputs, in the natural layout.
    """
    X, Bv, Cv = _chunk_views(x, B, C, Q)
    b, nc, _, g, hg, p = X.shape
    h, hp = g * hg, hg * p
    dev, cd = x.device, x.dtype
    cs_gh = cs.view(b, nc, Q, g, hg)
    dt_gh = None if dt is None else dt.view(b, nc, 1, Q, g, hg)
    upper = torch.ones(Q, Q, dtype=torch.bool, device=dev).triu(1)
    CB = torch.empty(b, nc, Q, Q, dtype=cd, device=dev)
    M = torch.empty(b, nc, Q, Q, dtype=cd, device=dev)
    Y_diag = torch.empty(g, hg, b, nc, Q, p, dtype=cd, device=dev)
    for gi in range(g):
        torch.matmul(Cv[:, :, :, gi], Bv[:, :, :, gi].transpose(-1, -2), out=CB)
        CB.masked_fill_(upper, 0.0)
        for hi in range(hg):
            # M[q, s] = exp(cs_q - cs_s) (C_q . B_s) dt_s, clamped as in the autograd path
            c = cs_gh[:, :, :, gi, hi]
            torch.sub(c.unsqueeze(-1), c.unsqueeze(-2), out=M)
            M.clamp_(min=-80.0, max=0.0).exp_().mul_(CB)
            if dt_gh is not None:
                M.mul_(dt_gh[..., gi, hi])
            if D is not None:
                M.diagonal(dim1=-2, dim2=-1).add_(D[gi * hg + hi])
            torch.matmul(M, X[:, :, :, gi, hi], out=Y_diag[gi, hi])
    del M, CB

    # What each chunk adds to the state, per group: B^T (n, Q) @ (x dt decay-to-end)
    # (Q, hg*p); then advanced to the state after each chunk.
    to_end = torch.exp(cs[:, :, -1:] - cs)  # (b, nc, Q, h)
    if dt is not None:
        to_end.mul_(dt.view(b, nc, Q, h))
    Xd, _, states = _state_inputs(X, to_end, Bv)
    s_init = _state_layout(s0, g)
    states, s_last = _advance_states(states, cs[:, :, -1], s_init)
    s_fin = _final_state(s_last, hg, p)

    # Output from the state entering each chunk (the previous chunk's), per group; then,
    # per head, y = exp(cs_q) (C_q S^T) + Y_diag, written over Xd (no longer needed).
    Y = torch.empty(g, b, nc, Q, hp, dtype=cd, device=dev)
    for gi in range(g):
        if nc > 1:
            if b == 1:  # a contiguous slice: written in place
                torch.matmul(Cv[:, 1:, :, gi], states[gi][:, :-1], out=Y[gi][:, 1:])
            else:
                Y[gi][:, 1:] = torch.matmul(Cv[:, 1:, :, gi], states[gi][:, :-1])
        if s_init is None:
            Y[gi][:, 0] = 0.0
        else:
            Y[gi][:, 0] = torch.matmul(Cv[:, 0, :, gi], s_init[gi])
    del states
    y = Xd
    decay_in = torch.exp(cs).view(b, nc, Q, g, hg)
    for gi in range(g):
        for hi in range(hg):
            torch.addcmul(Y_diag[gi, hi], Y[gi][..., hi * p:(hi + 1) * p],
                          decay_in[:, :, :, gi, hi, None], out=y[:, :, :, gi, hi])
    return y.view(x.shape), s_fin
