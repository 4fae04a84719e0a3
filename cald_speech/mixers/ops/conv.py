"""Depthwise causal 1-D convolution: causal-conv1d's CUDA kernel or PyTorch.

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

import torch
import torch.nn.functional as F

from cald_speech.mixers.ops.fused import load_kernel, use_fused


def causal_conv1d(x, weight, bias=None, activation="silu", impl=None, dtype=None):
    """Depthwise causal convolution with one dispatch point.

    Arguments
    ---------
    x : torch.Tensor
        (b, d, l) input, in any strides (the Mamba2 block hands a transposed view).
    weight : torch.Tensor
        (d, w) kernels (``conv1d.weight[:, 0]`` of a depthwise ``nn.Conv1d``).
    bias : torch.Tensor or None
        (d,) bias.
    activation : str or None
        ``"silu"`` or ``None``.
    impl : str or None
        ``"auto"`` / ``"torch"`` / ``"fused"``, default ``$CALD_SSD_IMPL`` or auto.
        Anything but ``"torch"`` uses causal-conv1d when it is installed and ``x`` is
        on CUDA (see :func:`cald_speech.mixers.ops.fused.use_fused`), else PyTorch:
        causal-conv1d is optional even for the fused SSD path, so a forced
        ``"fused"`` without it falls back here, with a log line.
    dtype : torch.dtype or None
        Type of the output (and of the activation): what ``nn.Conv1d`` gives under
        autocast, e.g. bfloat16. The PyTorch path sums in float32 and rounds once,
        before the activation; causal-conv1d gets ``x`` in this type. ``None``: the
        type of ``x``, ``weight`` and ``bias`` promoted together (float32 for bfloat16
        ``x`` and float32 weights).

    Returns
    -------
    torch.Tensor
        (b, d, l).

    Example
    -------
    >>> x, w, b = torch.randn(1, 4, 6).bfloat16(), torch.randn(4, 3), torch.randn(4)
    >>> causal_conv1d(x, w, b).dtype, causal_conv1d(x, w, b, dtype=torch.bfloat16).dtype
    (torch.float32, torch.bfloat16)
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"unsupported activation '{activation}' (use 'silu' or None)")
    if use_fused("conv", impl, x):
        fn = load_kernel("conv").fn
        x = x if dtype is None else x.to(dtype)  # its output takes the input's type
        return fn(fused_conv_layout(x), weight, bias=bias, activation=activation)
    return _causal_conv1d_torch(x, weight, bias, activation, dtype)


def fused_conv_layout(x):
    """``x`` (b, d, l) in strides that causal-conv1d's CUDA kernel accepts.

    The kernel takes either a length-contiguous tensor (``stride(2) == 1``) or a
    channel-last one (``stride(1) == 1``) whose ``stride(0)`` and ``stride(2)`` are
    multiples of 8. A Mamba2 block hands it the xBC columns of its in_proj output,
    whose row stride is the in_proj width (3,084 for a wav2vec2-base student with
    attention init): not a multiple of 8. Such a view is copied once, channel-last
    when ``d`` allows (what the block's next ops want), else length-contiguous.

    Example
    -------
    >>> rows = torch.randn(2, 10, 3084)[..., 12:2316]  # xBC columns, row stride 3084
    >>> y = fused_conv_layout(rows.transpose(1, 2))
    >>> y.stride(), torch.equal(y, rows.transpose(1, 2))
    ((23040, 1, 2304), True)
    """
    s0, s1, s2 = x.stride()
    if s2 == 1:
        return x
    if s1 == 1 and s0 % 8 == 0 and s2 % 8 == 0:
        return x
    if x.shape[1] % 8 == 0:
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    return x.contiguous()


def _causal_conv1d_torch(x, weight, bias, activation, out_dtype=None):
    # Works in the (b, l, d) layout the Mamba2 block already has (x is usually a
    # transposed view of it). Without autograd on CPU in float32: oneDNN's depthwise
    # convolution in the channels-last layout (one pass; measured 4x faster than the
    # shifted multiply-adds below at 1,000 x 896 on a 2-core EPYC); otherwise w
    # shifted multiply-adds, several times faster on CPU than a grouped F.conv1d on the
    # transposed tensor.
    d, w = weight.shape
    length = x.shape[-1]
    xt = x.transpose(1, 2)  # (b, l, d)
    inplace = not (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    ))
    dtype = torch.promote_types(x.dtype, weight.dtype)
    if bias is not None:
        dtype = torch.promote_types(dtype, bias.dtype)
    if inplace and x.device.type == "cpu" and dtype == torch.float32:
        out = _conv_channels_last(xt, weight, bias)
    else:
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
    if out_dtype is not None and out.dtype != out_dtype:
        out = out.to(out_dtype)
    if activation:
        out = F.silu(out, inplace=inplace)
    return out.transpose(1, 2)


def _conv_channels_last(xt, weight, bias):
    """The causal depthwise convolution of ``xt`` (b, l, d) as a channels-last conv2d,
    in float32 (autocast off); returns (b, l, d), contiguous."""
    b, length, d = xt.shape
    w = weight.shape[1]
    buf = xt.new_empty(b, length + w - 1, d, dtype=torch.float32)
    buf[:, : w - 1].zero_()
    buf[:, w - 1:].copy_(xt)
    # (b, d, 1, l + w - 1) with channels-last strides: a view of buf, no copy
    with torch.autocast("cpu", enabled=False):
        out = F.conv2d(buf.transpose(1, 2).unsqueeze(2), weight.float()[:, None, None, :],
                       None if bias is None else bias.float(), groups=d)
    return out.squeeze(2).transpose(1, 2)
