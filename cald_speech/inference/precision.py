"""How inference computes: float32 (the reference) or bfloat16 matrix products, and which
CPU kernel runs the linear layers.

``"fp32"`` (default) runs every operation in float32: the results the tests compare
with a plain forward. On CPU its linear layers (every ``F.linear``: projections,
feed-forward blocks, the CTC head) go to oneDNN's matrix product
(``torch.ops.mkldnn._linear_pointwise``) instead of the MKL ``addmm`` PyTorch picks
for float32: on AMD EPYC (Zen 5) oneDNN runs a 4,096 x 768 x 3,072 product at about
1.9x the rate (measured 328 against 176 GFLOP/s). Same float32 arithmetic in another
summation order: results agree to about 1e-6 relative (tests compare the two).
``CALD_CPU_LINEAR=aten`` in the environment keeps PyTorch's own kernel.

``"bf16"`` runs the model under ``torch.autocast`` with bfloat16: matrix products and
convolutions (projections, feed-forward blocks, CNN, attention) take bfloat16 inputs and
accumulate in float32, while layer norms, softmax, the SSD scan (it turns autocast off
and computes in float32) and the residual stream of the one-pass path stay in float32.
On CPUs with native bfloat16 dot products (AVX512-BF16 or AMX) a matrix product runs
several times faster; the transcript may differ in a few frames (the README reports the
measured difference). On CPUs without them bfloat16 is emulated and slower, so asking
for it there is refused.

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
import os

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cald_speech.errors import ConfigError

__all__ = ["CPU_LINEAR_ENV", "PRECISIONS", "OneDNNLinear", "bf16_native", "check_precision",
           "compute_precision", "onednn_linear_available"]

PRECISIONS = ("fp32", "bf16")
#: Environment variable: ``aten`` keeps PyTorch's own float32 linear kernel on CPU.
CPU_LINEAR_ENV = "CALD_CPU_LINEAR"


def _onednn_op():
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def onednn_linear_available():
    """Whether this PyTorch build has oneDNN's linear for dense CPU tensors.

    Example
    -------
    >>> isinstance(onednn_linear_available(), bool)
    True
    """
    return bool(torch.backends.mkldnn.is_available()) and _onednn_op() is not None


class OneDNNLinear(TorchFunctionMode):
    """Within it, float32 ``F.linear`` on CPU without autograd runs oneDNN's product.

    Anything else (autograd, other dtypes or devices, autocast) goes to PyTorch's own.

    Example
    -------
    >>> x, w, b = torch.randn(5, 8), torch.randn(3, 8), torch.randn(3)
    >>> with torch.no_grad(), OneDNNLinear():
    ...     y = F.linear(x, w, b)
    >>> bool(torch.allclose(y, F.linear(x, w, b), atol=1e-5))
    True
    """

    def __init__(self):
        super().__init__()
        self.op = _onednn_op()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and self.op is not None and not torch.is_grad_enabled():
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == x.dtype
                    and x.layout == torch.strided and x.dim() >= 2
                    and (b is None or b.dtype == x.dtype)
                    and not torch.is_autocast_enabled("cpu")):
                return self.op(x, w, b, "none", [], "")
        return func(*args, **kwargs)


def bf16_native(device):
    """Whether ``device`` computes bfloat16 matrix products natively.

    On CUDA the device asked for is checked (``"cuda"`` alone: the current one):
    NVIDIA GPUs from Ampere on (compute capability 8.0) have bfloat16 tensor cores;
    older ones only emulate it, which ``torch.cuda.is_bf16_supported()`` also counts.

    Example
    -------
    >>> isinstance(bf16_native(torch.device("cpu")), bool)
    True
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            return False
        if torch.version.hip:  # ROCm: the GPUs it supports have bfloat16
            return True
        return torch.cuda.get_device_capability(index) >= (8, 0)
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
    """The context to run a model's forward in.

    ``"bf16"``: autocast to bfloat16. ``"fp32"``: on CPU, :class:`OneDNNLinear` (unless
    ``CALD_CPU_LINEAR=aten`` or oneDNN is missing), elsewhere a null context.
    """
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    choice = os.environ.get(CPU_LINEAR_ENV, "onednn").strip().lower()
    if choice not in ("onednn", "aten"):
        raise ConfigError(f"{CPU_LINEAR_ENV}={choice!r} is not a choice (fix: set "
                          f"{CPU_LINEAR_ENV} to 'onednn' or 'aten')")
    if device.type == "cpu" and choice == "onednn" and onednn_linear_available():
        return OneDNNLinear()
    return contextlib.nullcontext()
