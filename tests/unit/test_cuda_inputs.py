"""bf16 on CUDA is accepted only where the requested GPU computes it natively, and
in-memory waveforms are taken wherever they live.

No GPU is needed: the CUDA queries are replaced by a machine with an emulating GPU 0
(Turing, compute capability 7.5) and a native GPU 1 (Ampere, 8.0); ``tests/gpu`` runs
the real thing.
"""

import pytest
import torch

from cald_speech.data.tokenizer import CharTokenizer
from cald_speech.errors import ConfigError
from cald_speech.inference import Transcriber
from cald_speech.inference.precision import bf16_native, check_precision
from cald_speech.student import convert
from cald_speech.testing import tiny_teacher


@pytest.fixture
def two_gpus(monkeypatch):
    caps = {0: (7, 5), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: caps[i or 0])
    # what PyTorch answers on such a machine: emulation counts
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.version, "hip", None)


def test_bf16_is_refused_on_a_gpu_that_only_emulates_it(two_gpus):
    with pytest.raises(ConfigError, match="no native bfloat16"):
        check_precision("bf16", "cuda:0")
    with pytest.raises(ConfigError, match="no native bfloat16"):
        check_precision("bf16", "cuda")             # the current device: GPU 0
    assert check_precision("bf16", "cuda:1") == "bf16"
    assert check_precision("bf16", torch.device("cuda", 1)) == "bf16"
    assert not bf16_native("cuda:2")                # no such device


def test_a_waveform_that_needs_autograd_is_transcribed():
    # As a CUDA tensor (tests/gpu), a tensor tied to autograd cannot become a NumPy
    # array as it is; the transcriber takes its values.
    asr = Transcriber(convert(tiny_teacher(head="ctc", vocab_size=29)).eval(), CharTokenizer())
    wav = torch.randn(8000, generator=torch.Generator().manual_seed(0)) * 0.1
    ref = asr.transcribe_waveform(wav, timestamps=False)
    out = asr.transcribe_waveform(wav.clone().requires_grad_(True), timestamps=False)
    assert out.text == ref.text
