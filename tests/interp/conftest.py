"""The fused Triton kernels on CPU, under Triton's interpreter: ``make test-interp``.

``make test`` runs this folder in a second pytest process with ``TRITON_INTERPRET=1``
(it must be in the environment before ``triton`` is first imported, and torch imports
it) and ``PYTHONPATH`` on the isolated no-compile mamba-ssm install of the Makefile
(``.venv/triton-interp``, with the numpy 1.26 the interpreter needs). Without
``TRITON_INTERPRET=1`` these tests are not collected.

Without a GPU driver, three CUDA calls of mamba-ssm's launchers are stood in for:
``torch.cuda.device`` (a null context), ``torch.cuda.get_device_properties`` (a
multiprocessor count) and the autotuner's benchmark. The interpreter's cost grows with
the number of programs launched, not with the block size, so the stand-in benchmark
ranks the config with the largest blocks fastest (about 4x quicker than the first
config, 15x quicker than the smallest). The choice of config does not change results
beyond rounding.
"""

import contextlib
import math
import types

import pytest

from cald_speech.mixers.ops.fused import triton_interpreter

if not triton_interpreter():
    collect_ignore_glob = ["test_*.py"]


def pytest_report_header(config):
    if triton_interpreter():
        return "interp: fused Triton kernels on CPU under Triton's interpreter"
    return "interp: tests/interp not collected (run `make test-interp`: TRITON_INTERPRET=1)"


def _largest_blocks_fastest(self, *args, config, **meta):
    size = math.prod(v for k, v in config.kwargs.items() if k.startswith("BLOCK"))
    return [-float(size)] * 3


@pytest.fixture(scope="session", autouse=True)
def _no_driver():
    import torch
    import triton.runtime.autotuner as autotuner

    patches = [(torch.cuda, "device", lambda index=None: contextlib.nullcontext()),
               (torch.cuda, "get_device_properties",
                lambda device=None: types.SimpleNamespace(multi_processor_count=2)),
               (autotuner.Autotuner, "_bench", _largest_blocks_fastest)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    yield
    for obj, name, value in saved:
        setattr(obj, name, value)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls that reach mamba-ssm's fused SSD kernel."""
    from cald_speech.mixers.ops import fused, ssd

    kernel = fused.load_kernel("ssd")
    assert kernel.available, kernel.origin
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return kernel.fn(*args, **kwargs)

    wrapped = fused.Kernel(kernel.name, counted, kernel.origin, kernel.triton)
    monkeypatch.setattr(ssd, "load_kernel", lambda name: wrapped)
    return calls
