"""What a GPU machine must show before a recipe trains there (``tools/gpu_acceptance.sh``).

- ``impl="auto"`` runs the fused SSD kernel on CUDA tensors (not the PyTorch path);
- under bf16 autocast the kernel gets what mamba-ssm's ``Mamba2`` hands it: bfloat16
  x, B, C and dt, float32 A, D, dt_bias and carried states;
- 12 heads in bfloat16 (wav2vec2-base's layout; head counts not divisible by 8 are the
  kernel's known weak spot) stay finite and match the PyTorch path;
- the block-wise one-pass scan (pieces with the convolution history and SSM state
  carried) gives the one-pass result on CUDA, and a sequence of over 100,000 frames
  scans in one call;
- ``check_precision("bf16", "cuda")`` accepts the GPU (Ampere or later) and
  ``Transcriber.transcribe_waveform`` takes a CUDA tensor.

Tolerances as in ``test_fused_parity.py`` (relative to the largest magnitude).
"""

import importlib.util

import pytest
import torch

import cald_speech.mixers.ops.ssd as ssd_mod
from cald_speech.mixers.mamba2 import Mamba2Block
from cald_speech.mixers.ops.fused import Kernel, load_kernel
from cald_speech.mixers.ops.ssd import ssd_scan

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or importlib.util.find_spec("mamba_ssm") is None,
        reason="needs a CUDA device and mamba-ssm",
    ),
]

TOL = {torch.float32: 2e-3, torch.bfloat16: 3e-2}


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


@pytest.fixture
def kernel_calls(monkeypatch):
    """The dtypes of every call that reaches mamba-ssm's fused SSD kernel."""
    real = load_kernel("ssd")
    calls = []

    def recording(x, dt, A, B, C, chunk_size, **kw):
        init = kw.get("initial_states")
        calls.append({"x": x.dtype, "dt": dt.dtype, "A": A.dtype, "B": B.dtype,
                      "C": C.dtype, "D": kw["D"].dtype if kw.get("D") is not None else None,
                      "dt_bias": kw["dt_bias"].dtype if kw.get("dt_bias") is not None
                      else None, "initial_states": None if init is None else init.dtype})
        return real.fn(x, dt, A, B, C, chunk_size, **kw)

    monkeypatch.setattr(ssd_mod, "load_kernel",
                        lambda name: Kernel(name, recording, real.origin, True))
    return calls


def _scan_inputs(dtype, b=1, l=2000, h=8, p=64, g=1, n=64, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device="cuda") * scale).to(dtype)

    args = dict(x=r(b, l, h, p), dt=r(b, l, h), A=-torch.rand(h, device="cuda") * 8 - 1,
                B=r(b, l, g, n, scale=0.3), C=r(b, l, g, n, scale=0.3))
    kw = dict(D=torch.randn(h, device="cuda"), dt_bias=torch.randn(h, device="cuda") - 2,
              dt_softplus=True)
    return args, kw


def test_auto_dispatch_runs_the_fused_kernel_on_cuda(kernel_calls):
    args, kw = _scan_inputs(torch.float32, l=300)
    ssd_scan(**args, **kw, impl="auto")
    assert len(kernel_calls) == 1
    block = Mamba2Block(256, d_state=64, headdim=64).cuda()
    block(torch.randn(2, 300, 256, device="cuda"))
    assert len(kernel_calls) == 2


def test_bf16_autocast_hands_the_kernel_bf16_x_b_c_and_fp32_ssm_parameters(kernel_calls):
    block = Mamba2Block(512, d_state=64, headdim=64).cuda()
    u = torch.randn(2, 500, 512, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = block(u)
        block.ssm_piecewise(500, 200, lambda a, b: block.project(block.in_proj, u[:, a:b]))
    y.float().square().mean().backward()
    bf16, f32 = torch.bfloat16, torch.float32
    want = {"x": bf16, "dt": bf16, "B": bf16, "C": bf16, "A": f32, "D": f32, "dt_bias": f32}
    assert kernel_calls[0] == {**want, "initial_states": None}
    assert [c["initial_states"] for c in kernel_calls[1:]] == [None, f32, f32]
    assert all({k: c[k] for k in want} == want for c in kernel_calls)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_twelve_heads_match_the_torch_path(dtype):
    args, kw = _scan_inputs(dtype, b=2, l=1500, h=12, p=64, g=1, n=64)
    y_fused = ssd_scan(**args, **kw, impl="fused")
    y_torch = ssd_scan(**args, **kw, impl="torch")
    assert torch.isfinite(y_fused).all()
    assert _rel(y_fused, y_torch) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_wise_one_pass_scan_carries_states_on_cuda(dtype):
    torch.manual_seed(0)
    block = Mamba2Block(768, d_state=64, headdim=64, impl="fused").cuda()
    u = torch.randn(1, 5000, 768, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16,
                                         enabled=dtype == torch.bfloat16):
        whole = block.ssm(*block.project(block.in_proj, u))
        pieces = block.ssm_piecewise(5000, 1536,
                                     lambda a, b: block.project(block.in_proj, u[:, a:b]))
    assert _rel(pieces, whole) <= TOL[dtype]


def test_a_sequence_of_over_100k_frames_scans_in_one_call():
    args, kw = _scan_inputs(torch.bfloat16, b=1, l=120_000, h=8, p=64, g=1, n=64)
    with torch.no_grad():
        y_fused, s_fused = ssd_scan(**args, **kw, impl="fused", return_final_states=True)
        y_torch, s_torch = ssd_scan(**args, **kw, impl="torch", return_final_states=True)
    assert torch.isfinite(y_fused).all() and y_fused.shape[1] == 120_000
    assert _rel(y_fused, y_torch) <= TOL[torch.bfloat16]
    assert _rel(s_fused, s_torch) <= TOL[torch.bfloat16]


def test_bf16_precision_is_accepted_on_this_gpu():
    from cald_speech.inference.precision import check_precision

    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("needs a CUDA device with native bfloat16 (Ampere or later)")
    assert check_precision("bf16", "cuda") == "bf16"
    assert check_precision("bf16", torch.device("cuda", torch.cuda.current_device()))


def test_transcribe_waveform_takes_a_cuda_tensor():
    from cald_speech.data.tokenizer import CharTokenizer
    from cald_speech.inference import Transcriber
    from cald_speech.student import convert
    from cald_speech.testing import tiny_teacher

    asr = Transcriber(convert(tiny_teacher(head="ctc", vocab_size=29)).eval(), CharTokenizer())
    wav = torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 0.1
    assert asr.transcribe_waveform(wav.cuda()).text == asr.transcribe_waveform(wav).text
