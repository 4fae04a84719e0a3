"""Where the fused kernels come from and when they run, without a GPU or mamba-ssm.

Fake ``mamba_ssm`` packages in a temporary folder stand for the two installs: a full one
(compiled extension present) and a no-compile one whose ``__init__`` fails on the
missing ``selective_scan_cuda``. A checker standing in for causal-conv1d rejects the
strides its CUDA kernel rejects.
"""

import logging
import sys
import types

import pytest
import torch

from cald_speech.errors import ConfigError
from cald_speech.mixers import build_mixer
from cald_speech.mixers.ops import conv as conv_mod
from cald_speech.mixers.ops import fused
from cald_speech.mixers.ops.ssd import (
    FUSED_CHUNK_SIZE,
    ssd_chunk_scan_torch,
    ssd_scan,
    ssd_sequential_ref,
)

KERNEL_SRC = '''
MARK = "{mark}"

def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, **kwargs):
    from cald_speech.mixers.ops.ssd import ssd_chunk_scan_torch
    CALLS.append(dict(x=x, dt=dt, A=A, B=B, C=C, chunk_size=chunk_size, **kwargs))
    return ssd_chunk_scan_torch(x, dt, A, B, C, chunk_size, **kwargs)

CALLS = []  # the arguments of every call
'''


def _fake_mamba(root, compiled):
    pkg = root / "mamba_ssm"
    (pkg / "ops" / "triton").mkdir(parents=True)
    init = "__version__ = 'fake'\n"
    if not compiled:
        init += "import selective_scan_cuda\n"
    (pkg / "__init__.py").write_text(init + "from mamba_ssm.ops import triton as _t\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "__init__.py").write_text("")
    mark = "compiled" if compiled else "no-compile"
    (pkg / "ops" / "triton" / "ssd_combined.py").write_text(KERNEL_SRC.format(mark=mark))


@pytest.fixture
def fresh_kernels(monkeypatch):
    """No cached kernels, no mamba_ssm modules, no logged decisions; restored after."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "mamba_ssm"}
    for k in saved:
        del sys.modules[k]
    fused.load_kernel.cache_clear()
    monkeypatch.setattr(fused, "_LOGGED", set())
    yield
    for k in [k for k in sys.modules if k.split(".")[0] == "mamba_ssm"]:
        del sys.modules[k]
    sys.modules.update(saved)
    fused.load_kernel.cache_clear()


@pytest.mark.parametrize("compiled", [True, False])
def test_triton_kernel_imports_with_or_without_compiled_extension(
        tmp_path, monkeypatch, fresh_kernels, compiled):
    _fake_mamba(tmp_path, compiled)
    monkeypatch.syspath_prepend(str(tmp_path))
    kernel = fused.load_kernel("ssd")
    assert kernel.available and kernel.triton
    assert sys.modules[kernel.fn.__module__].MARK == ("compiled" if compiled else "no-compile")
    if compiled:  # the full package is used as it is
        assert "full install" in kernel.origin
        assert not hasattr(sys.modules["mamba_ssm"], "__cald_shell__")
    else:  # entered without its __init__, and the log line will say why
        assert "without its __init__" in kernel.origin and "selective_scan_cuda" in kernel.origin
        assert sys.modules["mamba_ssm"].__cald_shell__


def test_missing_mamba_is_reported(monkeypatch, fresh_kernels):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # imports as if not installed
    kernel = fused.load_kernel("ssd")
    assert not kernel.available and kernel.origin == "mamba-ssm is not installed"
    with pytest.raises(ConfigError, match="not installed.*cuda' extra"):
        fused.use_fused("ssd", "fused", torch.zeros(1))


def _inputs(seed=0, b=2, l=19, h=4, p=3, g=2, n=5):
    gen = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(b, l, h, p, generator=gen), dt=torch.randn(b, l, h, generator=gen),
                A=-torch.rand(h, generator=gen) - 0.5, B=torch.randn(b, l, g, n, generator=gen),
                C=torch.randn(b, l, g, n, generator=gen), D=torch.randn(h, generator=gen),
                dt_bias=torch.randn(h, generator=gen), dt_softplus=True)


def test_forced_fused_runs_on_cpu_only_under_the_interpreter(
        tmp_path, monkeypatch, fresh_kernels, caplog):
    _fake_mamba(tmp_path, compiled=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = _inputs()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="inputs are on cpu.*TRITON_INTERPRET=1"):
        ssd_scan(**args, impl="fused")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with caplog.at_level(logging.INFO, logger=fused.__name__):
        y = ssd_scan(**args, impl="fused")
        assert ssd_scan(**args, impl="auto") is not None  # auto on CPU: PyTorch
    module = sys.modules[fused.load_kernel("ssd").fn.__module__]
    # one call (auto on CPU took the PyTorch path), with the caller's tensors and options
    # as mamba-ssm names them; chunk_size=None hands the kernel the fused default chunk
    (call,) = module.CALLS
    chunk = call.pop("chunk_size")
    assert chunk == FUSED_CHUNK_SIZE, chunk
    passed = {k: call.pop(k) for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")}
    assert all(passed[k] is args[k] for k in passed)
    assert call == dict(z=None, initial_states=None, dt_softplus=True,
                        return_final_states=False)   # the default dt_limit is not passed
    torch.testing.assert_close(y, ssd_chunk_scan_torch(**args, chunk_size=256))
    # a chunk size and a dt limit given by the caller reach the kernel as given
    z, s0 = torch.randn_like(args["x"]), torch.randn(2, 4, 3, 5)
    y, s = ssd_scan(**args, chunk_size=8, z=z, initial_states=s0, dt_limit=(0.1, 2.0),
                    return_final_states=True, impl="fused")
    call = module.CALLS[-1]
    assert len(module.CALLS) == 2 and call["chunk_size"] == 8
    assert call["z"] is z and call["initial_states"] is s0
    assert call["dt_limit"] == (0.1, 2.0) and call["return_final_states"] is True
    assert y.shape == args["x"].shape and s.shape == s0.shape
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("SSD scan: fused kernel on CPU under Triton's interpreter "
                               "(mamba_ssm") and "without its __init__" in line
               for line in lines)
    assert any("SSD scan: the chunked PyTorch scan (inputs on cpu" in line for line in lines)


def test_cuda_without_kernel_warns_once_and_falls_back(monkeypatch, fresh_kernels, caplog):
    missing = fused.Kernel("ssd", None, "mamba-ssm is not installed", True)
    on_gpu = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    with caplog.at_level(logging.INFO, logger=fused.__name__):
        assert fused.use_fused("ssd", "auto", on_gpu, missing) is False
        assert fused.use_fused("ssd", "auto", on_gpu, missing) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "on CUDA because mamba-ssm is not installed" in warnings[0].getMessage()
    present = fused.Kernel("ssd", print, "somewhere", True)
    assert fused.use_fused("ssd", "auto", on_gpu, present) is True
    assert fused.use_fused("ssd", "torch", on_gpu, present) is False


def test_fused_conv_gets_strides_it_accepts(monkeypatch, fresh_kernels):
    """causal-conv1d rejects channel-last inputs whose strides are not multiples of 8;
    the Mamba2 block hands it a view of in_proj's output (row stride 3,084 for a
    wav2vec2-base student with attention init)."""
    calls = []

    def causal_conv1d_fn(x, weight, bias=None, activation=None):
        # the checks of causal-conv1d's causal_conv1d_fwd
        assert x.stride(2) == 1 or x.stride(1) == 1
        if x.stride(1) == 1 and x.stride(2) > 1:
            assert x.stride(0) % 8 == 0 and x.stride(2) % 8 == 0, (
                "causal_conv1d with channel last layout requires strides (x.stride(0) and "
                "x.stride(2)) to be multiples of 8")
        calls.append(x.stride())
        return conv_mod._causal_conv1d_torch(x, weight, bias, activation)

    kernel = fused.Kernel("conv", causal_conv1d_fn, "checker", False)
    monkeypatch.setattr(conv_mod, "load_kernel", lambda name: kernel)
    monkeypatch.setattr(conv_mod, "use_fused", lambda name, impl, x: True)
    torch.manual_seed(0)
    cfg = build_mixer("bimamba2", 768, 12).attention_init_config(768, 12)
    mixer = build_mixer("bimamba2", 768, 12, **cfg)
    core = mixer.fwd
    assert core.d_in_proj == 3084
    u = torch.randn(2, 9, 768)
    zxbc = core.in_proj(u)[..., :-core.nheads]  # what project() hands on CUDA
    _, xbc = torch.split(zxbc, [core.d_inner, core.conv_dim], dim=-1)
    x = xbc.transpose(1, 2)
    assert x.stride() == (9 * 3084, 1, 3084)
    w = core.conv1d.weight.squeeze(1)
    y = conv_mod.causal_conv1d(x, w, core.conv1d.bias, impl="fused")
    assert calls == [(9 * 2304, 1, 2304)]
    torch.testing.assert_close(y, conv_mod._causal_conv1d_torch(x, w, core.conv1d.bias, "silu"))
    # odd channel counts go length-contiguous; acceptable layouts are not copied
    odd = torch.randn(2, 9, 13)[..., :5].transpose(1, 2)
    assert conv_mod.fused_conv_layout(odd).stride() == (45, 9, 1)
    good = torch.randn(2, 5, 9)
    assert conv_mod.fused_conv_layout(good) is good


def test_torch_scan_stays_fp32_under_autocast():
    """SpeechBrain trains under autocast; the fused kernel accumulates in fp32 whatever
    the autocast dtype, so the PyTorch scan must too (its matmuls would run in bf16)."""
    args = _inputs(l=150, h=4, p=16, g=1, n=16)
    plain = ssd_chunk_scan_torch(**args, chunk_size=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = ssd_chunk_scan_torch(**args, chunk_size=32)
    assert cast.dtype == torch.float32
    ref = ssd_sequential_ref(**args)
    err = ((cast.double() - ref).abs().max() / ref.abs().max()).item()
    assert err <= 1e-5
    torch.testing.assert_close(cast, plain, rtol=1e-6, atol=1e-6)
