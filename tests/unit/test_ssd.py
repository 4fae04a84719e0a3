"""The chunked SSD scan against a sequential float64 recurrence, values and gradients."""

import logging

import pytest
import torch

from cald_speech.errors import ConfigError
from cald_speech.mixers.ops import fused as fused_mod
from cald_speech.mixers.ops import ssd as ssd_mod
from cald_speech.mixers.ops import ssd_nograd
from cald_speech.mixers.ops.conv import causal_conv1d
from cald_speech.mixers.ops.ssd import (
    resolve_impl,
    ssd_chunk_scan_torch,
    ssd_scan,
    ssd_sequential_ref,
)


def _inputs(b, l, h, p, g, n, dtype=torch.float32, seed=0, with_D=True, with_init=True,
            D_hdim=False):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    x = r(b, l, h, p)
    dt = r(b, l, h)
    # negative, a few units: strong decays too; fp32 like -exp(A_log.float()) in Mamba2
    A = -torch.exp(r(h) * 0.5 + 0.5).to(torch.float64 if dtype == torch.float64 else torch.float32)
    B, C = r(b, l, g, n), r(b, l, g, n)
    D = (r(h, p) if D_hdim else r(h)) if with_D else None
    dt_bias = r(h) * 0.5 - 1.0
    s0 = r(b, h, p, n) if with_init else None
    return dict(x=x, dt=dt, A=A, B=B, C=C), dict(
        D=D, dt_bias=dt_bias, initial_states=s0, dt_softplus=True
    )


def _rel(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


SHAPES = [
    # b, l, h, p, g, n, chunk
    (2, 37, 4, 8, 2, 16, 8),  # l not a multiple of the chunk, ngroups > 1
    (1, 64, 6, 4, 3, 8, 16),  # exact multiple
    (3, 5, 2, 3, 1, 5, 16),  # shorter than one chunk
    (2, 50, 4, 16, 1, 32, 64),  # one partial chunk, ngroups = 1
    (1, 33, 8, 8, 8, 8, 7),  # one group per head (attention-init layout)
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_D", [True, False])
@pytest.mark.parametrize("with_init", [True, False])
def test_chunked_matches_sequential_fp32(shape, with_D, with_init):
    *dims, chunk = shape
    args, kw = _inputs(*dims, with_D=with_D, with_init=with_init)
    y, s = ssd_chunk_scan_torch(**args, chunk_size=chunk, return_final_states=True, **kw)
    y_ref, s_ref = ssd_sequential_ref(**args, return_final_states=True, **kw)
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    assert _rel(y, y_ref) <= 1e-5
    assert _rel(s, s_ref) <= 1e-5


def test_chunked_fp64_is_exact_and_options():
    args, kw = _inputs(2, 29, 4, 4, 2, 6, dtype=torch.float64, D_hdim=True)
    z = torch.randn(2, 29, 4, 4, dtype=torch.float64)
    kw.update(z=z, dt_limit=(0.01, 0.5))
    y = ssd_chunk_scan_torch(**args, chunk_size=6, **kw)
    assert _rel(y, ssd_sequential_ref(**args, **kw)) <= 1e-12


def test_chunk_size_does_not_change_result():
    args, kw = _inputs(1, 70, 4, 8, 1, 8)
    ys = [ssd_chunk_scan_torch(**args, chunk_size=c, **kw) for c in (1, 8, 32, 70, 256)]
    for y in ys[1:]:
        torch.testing.assert_close(y, ys[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [1, 16, 21, 40])
def test_split_with_carried_state_equals_one_pass(split):
    args, kw = _inputs(2, 41, 4, 4, 2, 8, with_init=False)
    y, s = ssd_chunk_scan_torch(**args, chunk_size=8, return_final_states=True, **kw)

    def part(sl):
        out = {k: v[:, sl] if v.dim() > 1 else v for k, v in args.items()}
        return out

    y1, s1 = ssd_chunk_scan_torch(**part(slice(0, split)), chunk_size=8,
                                  return_final_states=True, **kw)
    kw2 = dict(kw, initial_states=s1)
    y2, s2 = ssd_chunk_scan_torch(**part(slice(split, None)), chunk_size=8,
                                  return_final_states=True, **kw2)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, s, rtol=1e-5, atol=1e-5)


def _grads(fn, args, kw, keys):
    leaves = {}
    for src in (args, kw):
        for k, v in src.items():
            if torch.is_tensor(v) and k in keys:
                src[k] = v.detach().clone().requires_grad_(True)
                leaves[k] = src[k]
    y, s = fn(args, kw)
    gen = torch.Generator().manual_seed(1)
    wy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    ws = torch.randn(s.shape, generator=gen, dtype=torch.float64)
    loss = (y.double() * wy).sum() + (s.double() * ws).sum()
    loss.backward()
    return {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_gradients_match_sequential_reference(dtype, tol):
    keys = ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_states")
    args, kw = _inputs(2, 23, 4, 4, 2, 6, dtype=dtype)
    ref_args = {k: v.double() for k, v in args.items()}
    ref_kw = {k: v.double() if torch.is_tensor(v) else v for k, v in kw.items()}
    g = _grads(lambda a, k: ssd_chunk_scan_torch(**a, chunk_size=5, return_final_states=True,
                                                 **k), args, kw, keys)
    g_ref = _grads(lambda a, k: ssd_sequential_ref(**a, return_final_states=True, **k),
                   ref_args, ref_kw, keys)
    assert set(g) == set(keys)
    for k in keys:
        assert g[k] is not None, k
        assert _rel(g[k], g_ref[k]) <= tol, k


def test_bf16_inputs_accumulate_in_fp32():
    args, kw = _inputs(1, 300, 4, 16, 1, 16, dtype=torch.bfloat16)
    kw["dt_bias"] = kw["dt_bias"].float()
    y, s = ssd_chunk_scan_torch(**args, chunk_size=64, return_final_states=True, **kw)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    y_ref = ssd_sequential_ref(**args, **kw)
    assert _rel(y, y_ref) <= 1e-2


def test_dispatch_forcing_and_logging(monkeypatch, caplog):
    args, kw = _inputs(1, 9, 2, 2, 1, 3)
    monkeypatch.setenv("CALD_SSD_IMPL", "torch")
    assert resolve_impl() == "torch"
    assert resolve_impl("auto") == "auto"
    monkeypatch.setenv("CALD_SSD_IMPL", "bogus")
    with pytest.raises(ConfigError, match="CALD_SSD_IMPL"):
        resolve_impl()
    monkeypatch.delenv("CALD_SSD_IMPL")
    with pytest.raises(ConfigError, match="fused"):
        ssd_scan(**args, impl="fused")  # CPU tensors: the fused kernel cannot run
    monkeypatch.setattr(fused_mod, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger=fused_mod.__name__):
        ssd_scan(**args, impl="auto", **kw)
        ssd_scan(**args, impl="auto", **kw)
    lines = [r.getMessage() for r in caplog.records if "SSD scan" in r.getMessage()]
    assert lines == ["SSD scan: the chunked PyTorch scan (inputs on cpu; the fused kernel "
                     "runs on CUDA)"]


def test_causal_conv1d_matches_loop():
    x, w, bias = torch.randn(2, 5, 9), torch.randn(5, 4), torch.randn(5)
    y = causal_conv1d(x, w, bias, activation="silu", impl="torch")
    ref = torch.zeros_like(x)
    for t in range(9):
        for k in range(4):
            src = t - 3 + k
            if src >= 0:
                ref[..., t] += w[:, k] * x[..., src]
    ref = torch.nn.functional.silu(ref + bias[:, None])
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_conv1d_inference_path_matches_autograd_path(with_bias):
    # Without autograd on CPU (float32) the convolution is oneDNN's channels-last
    # conv2d; with autograd, shifted multiply-adds. Same values, on a strided view (as
    # the Mamba2 block passes its xBC columns), bfloat16 input promoted to float32 as
    # before, autocast leaving it in float32.
    gen = torch.Generator().manual_seed(4)
    rows = torch.randn(2, 37, 30, generator=gen)
    x = rows[..., 5:25].transpose(1, 2)  # (2, 20, 37), a strided view
    w = torch.randn(20, 4, generator=gen)
    bias = torch.randn(20, generator=gen) if with_bias else None
    with torch.no_grad():
        fast = causal_conv1d(x, w, bias, activation="silu", impl="torch")
    slow = causal_conv1d(x, w.clone().requires_grad_(True), bias, activation="silu",
                         impl="torch")
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-6, atol=1e-6)
    assert fast.shape == x.shape and fast.transpose(1, 2).is_contiguous()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = causal_conv1d(x.bfloat16(), w, bias, activation="silu", impl="torch")
    assert half.dtype == torch.float32
    ref = causal_conv1d(x.bfloat16().float(), w.clone().requires_grad_(True), bias,
                        activation="silu", impl="torch")
    torch.testing.assert_close(half, ref.detach(), rtol=1e-6, atol=1e-6)


@pytest.fixture
def few_loop_chunks(monkeypatch):
    monkeypatch.setattr(ssd_mod, "_LOOP_MAX_CHUNKS", 32)


@pytest.mark.parametrize("l,chunk", [(150, 2), (700, 1), (333, 8)])
def test_many_chunks_hierarchical_recurrence(l, chunk, few_loop_chunks):
    # More chunks than the loop handles: the inter-chunk recurrence is itself chunked
    # (two and three levels here).
    args, kw = _inputs(1, l, 4, 4, 2, 4)
    y, s = ssd_chunk_scan_torch(**args, chunk_size=chunk, return_final_states=True, **kw)
    y_ref, s_ref = ssd_sequential_ref(**args, return_final_states=True, **kw)
    assert _rel(y, y_ref) <= 1e-5
    assert _rel(s, s_ref) <= 1e-5


def test_many_chunks_gradients(few_loop_chunks):
    keys = ("x", "dt", "A", "B", "C", "initial_states")
    args, kw = _inputs(1, 90, 2, 3, 1, 4, dtype=torch.float64)
    ref_args, ref_kw = dict(args), dict(kw)
    g = _grads(lambda a, k: ssd_chunk_scan_torch(**a, chunk_size=2, return_final_states=True,
                                                 **k), args, kw, keys)
    g_ref = _grads(lambda a, k: ssd_sequential_ref(**a, return_final_states=True, **k),
                   ref_args, ref_kw, keys)
    for k in keys:
        assert _rel(g[k], g_ref[k]) <= 1e-10, k


def test_no_grad_and_autograd_paths_agree():
    args, kw = _inputs(2, 77, 4, 4, 2, 4)
    with torch.no_grad():
        y0 = ssd_chunk_scan_torch(**args, chunk_size=2, **kw)
    args["x"] = args["x"].clone().requires_grad_(True)
    y1 = ssd_chunk_scan_torch(**args, chunk_size=2, **kw)
    torch.testing.assert_close(y1.detach(), y0, rtol=1e-6, atol=1e-6)


def test_state_updates_split_by_heads(monkeypatch):
    # The autograd path's inter-chunk recurrence runs in pieces of heads below the
    # intra-op grain: with a grain of 2 elements, one piece per head and chunk (4 heads,
    # 5 chunks); values and gradients stay those of the sequential recurrence.
    monkeypatch.setattr(ssd_mod, "_SERIAL_NUMEL", 2)
    pieces, addcmul = [], torch.addcmul

    def counted(state, *a, **k):
        pieces.append(tuple(state.shape))
        return addcmul(state, *a, **k)

    monkeypatch.setattr(torch, "addcmul", counted)
    keys = ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_states")
    args, kw = _inputs(2, 23, 4, 4, 2, 6, dtype=torch.float64)
    ref_args, ref_kw = dict(args), dict(kw)
    out = {}

    def chunked(a, k):
        out["y"], out["s"] = ssd_chunk_scan_torch(**a, chunk_size=5, return_final_states=True,
                                                  **k)
        return out["y"], out["s"]

    g = _grads(chunked, args, kw, keys)
    assert pieces == [(2, 1, 4 * 6)] * (4 * 5)   # (batch, heads, p * n) per update
    y_ref, s_ref = ssd_sequential_ref(**ref_args, return_final_states=True, **ref_kw)
    assert _rel(out["y"], y_ref) <= 1e-10 and _rel(out["s"], s_ref) <= 1e-10
    g_ref = _grads(lambda a, k: ssd_sequential_ref(**a, return_final_states=True, **k),
                   ref_args, ref_kw, keys)
    for k in keys:
        assert _rel(g[k], g_ref[k]) <= 1e-10, k


def test_no_grad_kernel_reads_strided_inputs():
    # x, B and C as views into one projection (as Mamba2 splits its in_proj features):
    # same result as contiguous copies, and the inputs are left untouched.
    b, l, h, p, g, n = 2, 45, 4, 4, 2, 3
    gen = torch.Generator().manual_seed(3)
    xbc = torch.randn(b, l, h * p + 2 * g * n, generator=gen)
    before = xbc.clone()
    x, B, C = torch.split(xbc, [h * p, g * n, g * n], dim=-1)
    x, B, C = x.view(b, l, h, p), B.view(b, l, g, n), C.view(b, l, g, n)
    assert not x.is_contiguous()
    dt, A, D = torch.rand(b, l, h, generator=gen), -torch.rand(h, generator=gen), torch.ones(h)
    with torch.no_grad():
        y = ssd_chunk_scan_torch(x, dt, A, B, C, chunk_size=8, D=D)
        y_ref = ssd_chunk_scan_torch(x.contiguous(), dt, A, B.contiguous(), C.contiguous(),
                                     chunk_size=8, D=D)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    assert torch.equal(xbc, before)
    assert _rel(y, ssd_sequential_ref(x, dt, A, B, C, D=D)) <= 1e-5


# ---------------------------------------------------------------- no-grad kernels
@pytest.fixture
def kernel_spy(monkeypatch):
    """Records which no-grad kernel ran and, for the factored one, its steep heads."""
    calls = []
    factored, exact = ssd_nograd._ssd_core_factored, ssd_nograd._ssd_core_exact

    def spy_factored(*a):
        calls.append(("factored", a[4].tolist()))
        return factored(*a)

    def spy_exact(*a):
        calls.append(("exact", None))
        return exact(*a)

    monkeypatch.setattr(ssd_nograd, "_ssd_core_factored", spy_factored)
    monkeypatch.setattr(ssd_nograd, "_ssd_core_exact", spy_exact)
    return calls


def _force_kernel(kernel, monkeypatch):
    """"exact": always the exact kernel; "mixed": the factored one with every other
    head steep (a steep head is computed correctly at any decay range)."""
    if kernel == "exact":
        monkeypatch.setattr(ssd_nograd, "FACTOR_MAX_STEEP", -1.0)
    elif kernel == "mixed":
        factored = ssd_nograd._ssd_core_factored

        def every_other_steep(x, dt, cs, mid, steep, *rest):
            steep = torch.arange(steep.numel()) % 2 == 0
            return factored(x, dt, cs, mid, steep, *rest)

        monkeypatch.setattr(ssd_nograd, "_ssd_core_factored", every_other_steep)


@pytest.mark.parametrize("kernel", ["factored", "mixed", "exact"])
@pytest.mark.parametrize("b,g,chunk,loop_max", [(1, 1, 8, 1024), (2, 2, 4, 1024),
                                                (2, 2, 2, 8), (3, 1, 3, 4)])
@pytest.mark.parametrize("D_kind", [None, "head", "head_dim"])
@pytest.mark.parametrize("softplus,with_init", [(True, True), (False, False)])
def test_no_grad_kernel_exact_in_fp64(kernel, b, g, chunk, loop_max, D_kind, softplus,
                                      with_init, monkeypatch, kernel_spy):
    # Each no-grad kernel (factored decay, factored with steep heads, exact decay
    # matrices; the chunked recurrence above loop_max chunks) against the float64
    # recurrence: batches, groups, every D form, raw dt (no softplus, no bias), with and
    # without initial states.
    monkeypatch.setattr(ssd_mod, "_LOOP_MAX_CHUNKS", loop_max)
    _force_kernel(kernel, monkeypatch)
    args, kw = _inputs(b, 37, 4, 3, g, 5, dtype=torch.float64, with_D=D_kind is not None,
                       with_init=with_init, D_hdim=D_kind == "head_dim")
    kw["dt_softplus"] = softplus
    if not softplus:  # raw dt, used as given (a stable recurrence needs dt >= 0)
        kw["dt_bias"] = None
        args["dt"] = args["dt"].abs()
    with torch.no_grad():
        y, s = ssd_chunk_scan_torch(**args, chunk_size=chunk, return_final_states=True, **kw)
    ran = {"factored": ("factored", [False] * 4), "mixed": ("factored", [True, False] * 2),
           "exact": ("exact", None)}[kernel]
    assert kernel_spy == [ran]
    y_ref, s_ref = ssd_sequential_ref(**args, return_final_states=True, **kw)
    assert _rel(y, y_ref) <= 1e-12
    assert _rel(s, s_ref) <= 1e-12
    grad_args = dict(args, x=args["x"].clone().requires_grad_(True))
    y_grad = ssd_chunk_scan_torch(**grad_args, chunk_size=chunk, **kw)  # autograd path
    assert _rel(y_grad.detach(), y_ref) <= 1e-12


def _decays(b, l, h, chunk, per_chunk, seed):
    """dt (A = -1) whose in-chunk decay range is about ``per_chunk`` for every head."""
    gen = torch.Generator().manual_seed(seed)
    scale = 1 + 0.1 * (2 * torch.rand(b, l, h, generator=gen, dtype=torch.float64) - 1)
    return (per_chunk / (chunk - 1) * scale).float(), -torch.ones(h)


def test_factored_kernel_as_accurate_as_exact_at_its_range(monkeypatch, kernel_spy):
    # fp32, every chunk's decay range just below FACTOR_MAX_RANGE (the factors' largest
    # values): the factored kernel's error stays that of the exact decay matrices.
    b, l, h, p, g, n, chunk = 2, 640, 4, 8, 1, 8, 64
    args, kw = _inputs(b, l, h, p, g, n, with_D=True, with_init=True)
    args["dt"], args["A"] = _decays(b, l, h, chunk, 0.9 * ssd_nograd.FACTOR_MAX_RANGE, 1)
    kw.update(dt_softplus=False, dt_bias=None)
    ref = ssd_sequential_ref(**args, return_final_states=True, **kw)
    errors = {}
    for kernel in ("factored", "exact"):
        _force_kernel(kernel, monkeypatch)
        with torch.no_grad():
            y, s = ssd_chunk_scan_torch(**args, chunk_size=chunk, return_final_states=True,
                                        **kw)
        errors[kernel] = max(_rel(y, ref[0]), _rel(s, ref[1]))
    assert kernel_spy == [("factored", [False] * h), ("exact", None)]
    assert errors["exact"] <= 1e-5
    assert errors["factored"] <= 2 * errors["exact"]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_steep_heads_and_resets(dtype, tol, kernel_spy):
    # Heads 0 and 3 with resets inside chunks (beyond the factored range: steep), head 1
    # with resets on chunks' first frames (outside the range: the factors of the state
    # entering such a chunk underflow, as its true weight does), head 2 gentle.
    b, l, h, p, g, n, chunk = 2, 200, 4, 4, 2, 6, 64
    args, kw = _inputs(b, l, h, p, g, n, dtype=dtype, with_D=True, with_init=True)
    dt, A = _decays(b, l, h, chunk, 20.0, 2)
    dt = dt.to(dtype)
    dt[:, 70, 0] = dt[:, 150, 3] = 300.0
    dt[:, [64, 128], 1] = 300.0
    args.update(dt=dt, A=A.to(dtype))
    kw.update(dt_softplus=False, dt_bias=None)
    with torch.no_grad():
        y, s = ssd_chunk_scan_torch(**args, chunk_size=chunk, return_final_states=True, **kw)
    assert kernel_spy == [("factored", [True, False, False, True])]
    y_ref, s_ref = ssd_sequential_ref(**args, return_final_states=True, **kw)
    assert torch.isfinite(y).all()
    assert _rel(y, y_ref) <= tol
    assert _rel(s, s_ref) <= tol


def test_mostly_steep_heads_run_the_exact_kernel(kernel_spy):
    args, kw = _inputs(1, 128, 4, 4, 1, 4)
    args["dt"], args["A"] = _decays(1, 128, 4, 64, 2 * ssd_nograd.FACTOR_MAX_RANGE, 3)
    kw.update(dt_softplus=False, dt_bias=None)
    with torch.no_grad():
        y = ssd_chunk_scan_torch(**args, chunk_size=64, **kw)
    assert kernel_spy == [("exact", None)]
    assert _rel(y, ssd_sequential_ref(**args, **kw)) <= 1e-5
