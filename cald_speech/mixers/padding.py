"""Padding helpers shared by the mixers: masks, lengths, and per-row reversal.

Padding is at the end of each row (a prefix mask: valid frames first).

Example
-------
>>> import torch
>>> x = torch.arange(5).view(1, 5, 1).repeat(2, 1, 1)
>>> reverse_padded(x, torch.tensor([5, 3]))[..., 0].tolist()
[[4, 3, 2, 1, 0], [2, 1, 0, 3, 4]]
"""

import torch


def on_host(t):
    """Whether ``t`` lives in host memory, where reading its values costs no wait.

    Example
    -------
    >>> on_host(torch.zeros(1))
    True
    """
    return t.device.type == "cpu"


def lengths_from_mask(padding_mask, check=True):
    """Per-row number of valid frames of a prefix padding mask.

    Arguments
    ---------
    padding_mask : torch.Tensor
        (B, T) bool, ``True`` on valid frames, valid frames first.
    check : bool
        Raise ``ValueError`` if a row is not of the form ``[True]*n + [False]*(T-n)``.
        On a GPU the check is a device-side assertion: it does not wait for the device
        (a bad mask then fails the next operation that waits, with the same message).

    Returns
    -------
    torch.Tensor
        (B,) int64.

    Example
    -------
    >>> lengths_from_mask(torch.tensor([[True, True, False], [True, True, True]])).tolist()
    [2, 3]
    """
    if padding_mask.dim() != 2:
        raise ValueError(f"padding_mask must be (B, T), got shape {tuple(padding_mask.shape)}")
    mask = padding_mask.bool()
    lengths = mask.sum(dim=1)
    if check:
        expected = torch.arange(mask.shape[1], device=mask.device) < lengths.unsqueeze(1)
        message = ("padding_mask must mark valid frames first and padding at the end of "
                   "each row (True...True False...False); right-pad the batch")
        if not on_host(mask):
            torch._assert_async((expected == mask).all(), message)
        elif not torch.equal(expected, mask):
            raise ValueError(message)
    return lengths


def reverse_padded(x, lengths):
    """Reverses the first ``lengths[b]`` frames of each row; padding stays at the end.

    The operation is its own inverse. With every row full it equals ``x.flip(1)``.

    Arguments
    ---------
    x : torch.Tensor
        (B, T, ...) batch.
    lengths : torch.Tensor or None
        (B,) valid frames per row; ``None`` reverses whole rows.

    Returns
    -------
    torch.Tensor
        Same shape as ``x``.

    Example
    -------
    >>> reverse_padded(torch.tensor([[1, 2, 3, 0]]), torch.tensor([3])).tolist()
    [[3, 2, 1, 0]]
    """
    T = x.shape[1]
    if lengths is None:
        return x.flip(1)
    lengths = lengths.to(device=x.device, dtype=torch.long)
    # Full rows are a plain flip; asking that on a GPU would wait for it (the gather
    # below gives the same result).
    if on_host(x) and bool((lengths == T).all()):
        return x.flip(1)
    t = torch.arange(T, device=x.device)
    idx = torch.where(t < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - t, t)  # (B, T)
    idx = idx.view(idx.shape + (1,) * (x.dim() - 2)).expand_as(x)
    return torch.gather(x, 1, idx)


def mask_padding(x, padding_mask):
    """Zeros the padded frames of ``x`` (B, T, ...); ``padding_mask`` may be ``None``.

    Example
    -------
    >>> mask_padding(torch.ones(1, 3, 1), torch.tensor([[True, True, False]]))[..., 0].tolist()
    [[1.0, 1.0, 0.0]]
    """
    if padding_mask is None:
        return x
    m = padding_mask.to(x.dtype).view(padding_mask.shape + (1,) * (x.dim() - 2))
    return x * m
