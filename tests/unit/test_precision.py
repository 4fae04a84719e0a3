"""bfloat16 inference: close to float32 in every mode, refused where it is emulated."""

import pytest
import torch

from cald_speech.data.tokenizer import CharTokenizer
from cald_speech.errors import ConfigError
from cald_speech.inference import Transcriber, main
from cald_speech.inference import precision as prec
from cald_speech.student import convert, package_model
from cald_speech.testing import tiny_teacher


@pytest.fixture
def bf16_anywhere(monkeypatch):
    """bf16 accepted on any CPU, so that its numbers are checked on every machine.

    Without native bfloat16 matrix products (AVX512-BF16, AMX) PyTorch emulates them:
    slower, rounded to bfloat16 all the same. The refusal is tested on its own below.
    """
    monkeypatch.setattr(prec, "bf16_native", lambda device: True)


@pytest.fixture(scope="module")
def models():
    teacher = tiny_teacher(head="ctc", vocab_size=29)
    return {"teacher": teacher, "student": convert(teacher).eval()}


def _wav(seconds=3.0):
    g = torch.Generator().manual_seed(0)
    return torch.randn(int(seconds * 16000), generator=g) * 0.3


@pytest.mark.parametrize("which,mode", [("student", "one-pass"), ("student", "plain"),
                                        ("teacher", "windowed"), ("teacher", "plain")])
def test_bf16_posteriors_are_close_to_fp32(models, which, mode, bf16_anywhere):
    kw = dict(window_s=1.0, overlap_s=0.2)
    wav = _wav()
    fp = Transcriber(models[which], CharTokenizer(), **kw).log_probs(wav, mode)
    bf = Transcriber(models[which], CharTokenizer(), precision="bf16", **kw).log_probs(wav, mode)
    assert bf.dtype == torch.float32 and bf.shape == fp.shape
    diff = (fp - bf).abs().max().item()
    assert 1e-5 < diff < 0.05  # bfloat16 did run, and only rounding changed
    assert (fp.argmax(-1) == bf.argmax(-1)).float().mean() > 0.95
    # the model itself is untouched: float32 weights, float32 results again
    assert all(p.dtype == torch.float32 for p in models[which].parameters())
    again = Transcriber(models[which], CharTokenizer(), **kw).log_probs(wav, mode)
    torch.testing.assert_close(again, fp, rtol=0, atol=0)


def test_bf16_one_pass_keeps_a_float32_residual_stream(models, bf16_anywhere):
    # The one-pass path writes every layer's output into float32 buffers: its posteriors
    # are as close to fp32 as those of the plain forward under the same autocast.
    wav = _wav(2.0)
    fp = Transcriber(models["student"], CharTokenizer()).log_probs(wav, "plain")
    asr = Transcriber(models["student"], CharTokenizer(), precision="bf16")
    one_pass = (asr.log_probs(wav, "one-pass") - fp).abs().max()
    plain = (asr.log_probs(wav, "plain") - fp).abs().max()
    assert one_pass < 2 * plain + 1e-3


def test_unknown_or_emulated_precision_is_refused(monkeypatch, models):
    with pytest.raises(ConfigError, match="'fp16' is not one of fp32, bf16"):
        Transcriber(models["teacher"], CharTokenizer(), precision="fp16")
    monkeypatch.setattr(prec, "bf16_native", lambda device: False)
    with pytest.raises(ConfigError, match="no native bfloat16.*use fp32"):
        Transcriber(models["teacher"], CharTokenizer(), precision="bf16")


def test_cli_transcribes_in_bf16(tmp_path, models, capsys, bf16_anywhere):
    import soundfile as sf

    folder = package_model(models["student"], tmp_path / "student", CharTokenizer())
    path = tmp_path / "a.wav"
    sf.write(path, _wav(1.0).numpy(), 16000)
    assert main([str(path), "--model", str(folder), "--precision", "bf16",
                 "--no-progress", "--format", "json"]) == 0
    assert '"duration": 1.0' in capsys.readouterr().out
    assert main([str(path), "--model", str(folder), "--precision", "fp8"]) == 2


@pytest.mark.skipif(not prec.onednn_linear_available(), reason="no oneDNN in this build")
@pytest.mark.parametrize("which,mode", [("student", "one-pass"), ("teacher", "windowed")])
def test_onednn_linears_equal_aten_ones(models, which, mode, monkeypatch):
    # fp32 on CPU: the linear layers run oneDNN's product (counted here); PyTorch's own
    # kernel (CALD_CPU_LINEAR=aten) gives the same posteriors up to summation order.
    kw = dict(window_s=1.0, overlap_s=0.2)
    wav = _wav()
    monkeypatch.setenv("CALD_CPU_LINEAR", "aten")
    ref = Transcriber(models[which], CharTokenizer(), **kw).log_probs(wav, mode)
    monkeypatch.setenv("CALD_CPU_LINEAR", "onednn")
    calls = []
    op = prec._onednn_op()

    def counted(*args):
        calls.append(args[0].shape)
        return op(*args)

    monkeypatch.setattr(prec, "_onednn_op", lambda: counted)
    got = Transcriber(models[which], CharTokenizer(), **kw).log_probs(wav, mode)
    assert len(calls) >= 3  # projections, feed-forward blocks, CTC head
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_onednn_mode_leaves_autograd_and_other_dtypes_alone():
    import torch.nn.functional as F

    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(3, 8)
    with prec.OneDNNLinear():
        y = F.linear(x, w)  # autograd on: PyTorch's own, differentiable
        assert y.grad_fn is not None
        with torch.no_grad():
            z = F.linear(x.double(), w.double())  # float64: PyTorch's own
    assert z.dtype == torch.float64
    torch.testing.assert_close(y, x @ w.t())


def test_bad_cpu_linear_setting_is_a_config_error(monkeypatch):
    monkeypatch.setenv("CALD_CPU_LINEAR", "blas")
    with pytest.raises(ConfigError, match="CALD_CPU_LINEAR='blas'.*'onednn' or 'aten'"):
        prec.compute_precision("fp32", "cpu")
