"""Depthwise causal 1-D convolution: causal-conv1d's CUDA kernel or ``F.conv1d``.

``y[:, d, t] = act(bias[d] + sum_k weight[d, k] * x[:, d, t - (w - 1) + k])``, zeros
before the first frame; the convolution of ``mamba_ssm.modules.mamba2.Mamba2``.

Example
-------
>>> import torch
>>> x, w = torch.randn(2, 3, 6), torch.randn(3, 4)
>>> y = causal_conv1d(x, w, activation=None, impl="torch")
>>> bool(torch.allclose(y[..., 0], x[..., 0] * w[:, -1]))
True
"""

import functools

import torch
import torch.nn.functional as F

from cald_speech.mixers.ops.ssd import _log_once, resolve_impl


@functools.cache
def _fused_conv_fn():
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        return None
    return causal_conv1d_fn


def causal_conv1d(x, weight, bias=None, activation="silu", impl=None):
    """Depthwise causal convolution with one dispatch point.

    Arguments
    ---------
    x : torch.Tensor
        (b, d, l) input.
    weight : torch.Tensor
        (d, w) kernels (``conv1d.weight[:, 0]`` of a depthwise ``nn.Conv1d``).
    bias : torch.Tensor or None
        (d,) bias.
    activation : str or None
        ``"silu"`` or ``None``.
    impl : str or None
        ``"auto"`` / ``"torch"`` / ``"fused"``, default ``$CALD_SSD_IMPL`` or auto.
        Anything but ``"torch"`` uses causal-conv1d when it is installed and ``x`` is
        on CUDA, else ``F.conv1d``.

    Returns
    -------
    torch.Tensor
        (b, d, l).
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"unsupported activation '{activation}' (use 'silu' or None)")
    impl = resolve_impl(impl)
    fn = _fused_conv_fn() if impl != "torch" and x.is_cuda else None
    # causal-conv1d is optional even for the fused SSD path (mamba-ssm's Triton scan
    # does not need it), so forcing "fused" falls back to F.conv1d here, with a log line.
    if fn is not None and x.is_cuda:
        _log_once("conv-fused", "depthwise conv: fused causal_conv1d_fn (CUDA)")
        return fn(x, weight, bias=bias, activation=activation)
    _log_once("conv-torch", "depthwise conv: shifted multiply-adds (pure PyTorch)")
    return _causal_conv1d_torch(x, weight, bias, activation)


def _causal_conv1d_torch(x, weight, bias, activation):
    # Works in the (b, l, d) layout the Mamba2 block already has (x is usually a
    # transposed view of it): w shifted multiply-adds, several times faster on CPU than
    # a grouped F.conv1d on the transposed tensor.
    d, w = weight.shape
    length = x.shape[-1]
    xt = x.transpose(1, 2)  # (b, l, d)
    inplace = not (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    ))
    if bias is not None:
        out = torch.addcmul(bias, xt, weight[:, w - 1])
    else:
        out = xt * weight[:, w - 1]
    for k in range(w - 1):
        shift = w - 1 - k
        if shift >= length:
            continue
        if inplace:
            out[:, shift:].addcmul_(xt[:, : length - shift], weight[:, k])
        else:
            pad = xt.new_zeros(xt.shape[0], shift, d)
            out = out + torch.cat([pad, xt[:, : length - shift]], dim=1) * weight[:, k]
    if activation:
        out = F.silu(out, inplace=inplace)
    return out.transpose(1, 2)
