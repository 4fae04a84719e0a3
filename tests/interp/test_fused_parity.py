"""mamba-ssm's fused Triton SSD kernels against the chunked PyTorch scan, on CPU.

Each test runs the same inputs and parameters through ``impl="fused"`` (the Triton
kernels, executed by Triton's interpreter) and ``impl="torch"`` and compares outputs,
final states and every gradient, relative to the largest magnitude of the PyTorch
result. Both paths run in fp32 here (no TF32 on the interpreter), so the tolerance is
tight: ``TOL``.
"""

import pytest
import torch

from cald_speech.mixers import build_mixer
from cald_speech.mixers.bimamba2 import BiMamba2
from cald_speech.mixers.ops.ssd import ssd_scan

TOL = 2e-5


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _scan_inputs(b, l, h, p, g, n, D_shape, with_z, with_state, seed):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen) * scale + shift).requires_grad_(True)

    inputs = dict(x=r(b, l, h, p), dt=r(b, l, h, scale=0.5),
                  A=(-torch.rand(h, generator=gen) * 4 - 0.5).requires_grad_(True),
                  B=r(b, l, g, n, scale=0.5), C=r(b, l, g, n, scale=0.5),
                  D=r(*D_shape), dt_bias=r(h, shift=-2.0))
    if with_z:
        inputs["z"] = r(b, l, h, p)
    if with_state:
        inputs["initial_states"] = r(b, h, p, n, scale=0.5)
    return inputs


def _run_scan(impl, inputs, **options):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    y, state = ssd_scan(**leaves, return_final_states=True, impl=impl, **options)
    gen = torch.Generator().manual_seed(7)
    w_y, w_s = torch.randn(y.shape, generator=gen), torch.randn(state.shape, generator=gen)
    ((y * w_y).sum() + (state * w_s).sum()).backward()
    return y.detach(), state.detach(), {k: v.grad for k, v in leaves.items()}


# Every option the mixers use: the configuration (D per head, z, dt_bias with
# softplus, initial and final states), then D per channel with a dt clamp, no initial
# state and a length that is not a multiple of the chunk, with a single group.
SCAN_CASES = {
    "z-init-state": (dict(b=2, l=200, h=4, p=16, g=2, n=16, D_shape=(4,), with_z=True,
                          with_state=True), dict(chunk_size=64, dt_softplus=True)),
    "D-per-channel-dt-limit": (dict(b=1, l=77, h=2, p=8, g=1, n=8, D_shape=(2, 8),
                                    with_z=False, with_state=False),
                               dict(chunk_size=32, dt_softplus=True, dt_limit=(0.01, 0.5))),
}


@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_ssd_scan_fused_matches_torch(case, fused_calls):
    shape, options = SCAN_CASES[case]
    inputs = _scan_inputs(seed=0, **shape)
    y_f, s_f, g_f = _run_scan("fused", inputs, **options)
    assert fused_calls, "the fused kernel was not called"
    y_t, s_t, g_t = _run_scan("torch", inputs, **options)
    assert _rel(y_f, y_t) <= TOL
    assert _rel(s_f, s_t) <= TOL
    assert set(g_f) == set(g_t) == set(inputs)
    for name in g_t:
        assert _rel(g_f[name], g_t[name]) <= TOL, name


def _mixer_pair(name, hidden, heads, chunk_size):
    cfg = dict(BiMamba2.attention_init_config(hidden, heads), chunk_size=chunk_size)
    torch.manual_seed(0)
    ref = build_mixer(name, hidden, heads, impl="torch", **cfg)
    attention = [torch.nn.Linear(hidden, hidden) for _ in range(4)]
    ref.init_from_attention(*attention)
    fused = build_mixer(name, hidden, heads, impl="fused", **cfg)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("name", ["bimamba2", "bimamba2_shared"])
def test_mixer_fused_matches_torch_at_base_head_layout(name, fused_calls):
    """wav2vec2-base's 12 heads of 64, attention-initialised, on a padded batch."""
    ref, fused = _mixer_pair(name, 768, 12, chunk_size=64)
    in_rows = {m.in_proj.weight.shape[0] for m in fused.modules() if hasattr(m, "in_proj")}
    assert in_rows == {3084}  # z, x, B, C (4 x 768) and dt (12)
    x = torch.randn(2, 40, 768, generator=torch.Generator().manual_seed(1))
    mask = torch.arange(40) < torch.tensor([[40], [23]])
    results = []
    for mixer in (fused, ref):
        y = mixer(x, mask)
        (y * torch.linspace(-1, 1, 768)).square().mean().backward()
        results.append((y.detach(), {k: p.grad for k, p in mixer.named_parameters()}))
    assert fused_calls, "the fused kernel was not called"
    (y_f, g_f), (y_t, g_t) = results
    assert _rel(y_f, y_t) <= TOL
    assert y_f[1, 23:].abs().max() == 0  # padding stays zero
    assert set(g_f) == set(g_t)
    for k in g_t:
        assert _rel(g_f[k], g_t[k]) <= TOL, k


@pytest.mark.parametrize("name", ["bimamba2", "bimamba2_shared"])
def test_one_pass_long_form_with_fused_scan(name, fused_calls):
    """Block-wise scanning with carried conv context and SSM state, on the fused kernel."""
    from cald_speech.inference import bimamba2_blockwise

    ref, fused = _mixer_pair(name, 64, 4, chunk_size=16)
    x = torch.randn(1, 150, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = ref(x)
        blocks = bimamba2_blockwise(fused, x, block=32, projection_cache_mb=0)
    assert len(fused_calls) >= 2 * 5, "each direction scans each of the 5 blocks"
    assert _rel(blocks, whole) <= TOL
