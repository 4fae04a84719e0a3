"""Compute precision of inference: float32 (the reference) or bfloat16 matrix products.

``"fp32"`` (default) runs every operation in float32: the results the tests compare
with a plain forward. ``"bf16"`` runs the model under ``torch.autocast`` with
bfloat16: matrix products and convolutions (projections, feed-forward blocks, CNN,
attention) take bfloat16 inputs and accumulate in float32, while layer norms, softmax,
the SSD scan (it turns autocast off and computes in float32) and the residual stream of
the one-pass path stay in float32. On CPUs with native bfloat16 dot products (AVX512-BF16
or AMX) a matrix product runs several times faster; the transcript may differ in a few
frames (the README reports the measured difference). On CPUs without them bfloat16 is
emulated and slower, so asking for it there is refused.

Example
-------
>>> import torch
>>> with compute_precision("fp32", torch.device("cpu")):
...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
torch.float32
>>> check_precision("fp16", torch.device("cpu"))
Traceback (most recent call last):
...
cald_speech.errors.ConfigError: precision 'fp16' is not one of fp32, bf16
"""

import contextlib

import torch

from cald_speech.errors import ConfigError

__all__ = ["PRECISIONS", "bf16_native", "check_precision", "compute_precision"]

PRECISIONS = ("fp32", "bf16")


def bf16_native(device):
    """Whether ``device`` computes bfloat16 matrix products natively.

    Example
    -------
    >>> isinstance(bf16_native(torch.device("cpu")), bool)
    True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision, device):
    """Raises :class:`ConfigError` for an unknown precision, or bf16 where it is emulated."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not bf16_native(device):
        raise ConfigError(
            f"precision bf16: {device} has no native bfloat16 matrix products (it would be "
            "emulated, slower than fp32); use fp32")
    return precision


def compute_precision(precision, device):
    """The context to run a model's forward in (a null context for ``"fp32"``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
