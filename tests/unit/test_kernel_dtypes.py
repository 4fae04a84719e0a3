"""What the fused SSD kernel is handed under bf16 autocast: what mamba-ssm's ``Mamba2``
hands it — bfloat16 x, B, C and dt (the depthwise convolution's output takes autocast's
dtype, as ``nn.Conv1d`` does), float32 A, D, dt_bias and carried states. (The PyTorch
scan computes in float32 whatever it gets; on its path the convolution's output stays
float32, as before.)

The kernel is replaced by a recording stand-in that the dispatch takes as available on
CPU (the PyTorch scan behind it), so this runs under CPU autocast; ``tests/gpu`` checks
the same at the real kernel on CUDA.
"""

import pytest
import torch

import cald_speech.mixers.ops.ssd as ssd_mod
from cald_speech.mixers.mamba2 import Mamba2Block
from cald_speech.mixers.ops.fused import Kernel
from cald_speech.mixers.ops.ssd import ssd_chunk_scan_torch

BF16 = torch.bfloat16
F32 = torch.float32
WANTED = {"x": BF16, "dt": BF16, "B": BF16, "C": BF16, "A": F32, "D": F32, "dt_bias": F32}


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def kernel(x, dt, A, B, C, chunk_size, **kw):
        init = kw.get("initial_states")
        seen.append({"x": x.dtype, "dt": dt.dtype, "A": A.dtype, "B": B.dtype,
                     "C": C.dtype, "D": kw["D"].dtype, "dt_bias": kw["dt_bias"].dtype,
                     "initial_states": None if init is None else init.dtype})
        return ssd_chunk_scan_torch(x, dt, A, B, C, chunk_size, **kw)

    monkeypatch.setattr(ssd_mod, "use_fused", lambda name, impl, t, kernel=None: True)
    monkeypatch.setattr(ssd_mod, "load_kernel",
                        lambda name: Kernel(name, kernel, "recording stand-in", True))
    return seen


def test_bf16_autocast_hands_the_kernel_bf16_x_b_c_and_fp32_ssm_parameters(calls):
    block = Mamba2Block(32, d_state=8, headdim=8, chunk_size=4)
    u = torch.randn(2, 12, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=BF16):
        y = block(u)
    y.float().square().mean().backward()
    assert calls == [{**WANTED, "initial_states": None}]
    assert y.dtype == BF16
    for name in ("A_log", "D", "dt_bias", "conv1d.weight"):   # fp32 parameters, fp32 grads
        p = block.get_parameter(name)
        assert p.dtype == F32 and p.grad is not None and p.grad.dtype == F32, name


def test_carried_states_stay_fp32_under_bf16_autocast(calls):
    block = Mamba2Block(32, d_state=8, headdim=8, chunk_size=4)
    u = torch.randn(1, 12, 32)
    with torch.autocast("cpu", dtype=BF16), torch.no_grad():
        block.ssm_piecewise(12, 4, lambda a, b: block.project(block.in_proj, u[:, a:b]))
    assert [c["initial_states"] for c in calls] == [None, F32, F32]
    assert all({k: c[k] for k in WANTED} == WANTED for c in calls)


def test_fp32_stays_fp32(calls):
    block = Mamba2Block(32, d_state=8, headdim=8, chunk_size=4)
    block(torch.randn(1, 6, 32))
    assert {calls[0][k] for k in ("x", "dt", "B", "C", "A", "D", "dt_bias")} == {F32}
