"""Linformer self-attention (``"linformer"``): keys and values projected along time.

``softmax(Q (E K)^T / sqrt(d)) (F V)`` with ``E, F`` of shape ``(k, max_len)``, shared
by the heads (Wang et al., 2020). A length-T input uses the first T columns, so cost is
O(T k) and the **maximum input length is ``max_len``** (default 4,096 frames = 82 s at
50 frames/s): a longer input raises :class:`~cald_speech.errors.ConfigError`; build
with a larger ``max_len`` (each of E and F holds ``k * max_len`` weights per layer).
Padded frames are zeroed before the projection, so a padded row gives exactly the
result of the utterance alone. ``E``/``F`` start Xavier-normal
(std ``sqrt(2 / (k + max_len))``); q/k/v/out_proj are attention-shaped and copy from it.

Example
-------
>>> import torch
>>> m = Linformer(hidden_size=16, num_heads=2, k=4, max_len=32)
>>> m(torch.randn(2, 10, 16)).shape
torch.Size([2, 10, 16])
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from cald_speech.errors import ConfigError
from cald_speech.mixers import register_mixer
from cald_speech.mixers.attention import QKVOMixer
from cald_speech.mixers.padding import mask_padding

__all__ = ["Linformer"]


@register_mixer
class Linformer(QKVOMixer):
    """Multi-head attention over ``k`` learned mixtures of the frames.

    Arguments
    ---------
    hidden_size : int
        Model width C.
    num_heads : int
        Heads.
    k : int
        Projected length.
    max_len : int
        Longest input accepted (frames).
    share_kv : bool
        Use one projection for keys and values (``F = E``).
    bias : bool
        Projection biases.
    dropout : float
        Attention-probability dropout in training.

    Example
    -------
    >>> m = Linformer(8, 2, k=4, max_len=16)
    >>> m(torch.randn(1, 17, 8))
    Traceback (most recent call last):
    ...
    cald_speech.errors.ConfigError: linformer: input of 17 frames is longer than max_len=16 ...
    """

    name = "linformer"

    @property
    def max_frames(self):
        """Inputs longer than ``max_len`` frames do not fit ``E`` and ``F``."""
        return self.max_len

    def __init__(self, hidden_size, num_heads, k=256, max_len=4096, share_kv=False, bias=True,
                 dropout=0.0):
        super().__init__(hidden_size, num_heads, bias=bias)
        if k < 1 or max_len < 1:
            raise ConfigError(f"linformer needs k >= 1 and max_len >= 1, got {k}, {max_len}")
        self.k = k
        self.max_len = max_len
        self.share_kv = share_kv
        self.dropout = dropout
        std = math.sqrt(2.0 / (k + max_len))
        self.E = nn.Parameter(torch.randn(k, max_len) * std)
        self.F = None if share_kv else nn.Parameter(torch.randn(k, max_len) * std)
        self._cfg.update(k=k, max_len=max_len, share_kv=share_kv, dropout=dropout)

    def forward(self, hidden_states, padding_mask=None):
        """(B, T, C), (B, T) mask (True = valid) -> (B, T, C); padded outputs are zero."""
        T = hidden_states.shape[1]
        if T > self.max_len:
            raise ConfigError(
                f"linformer: input of {T} frames is longer than max_len={self.max_len} "
                f"(fix: build the mixer with max_len >= {T}, or split the input)"
            )
        x = mask_padding(hidden_states, padding_mask)
        q, k, v = (self._heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        if padding_mask is not None:
            m = padding_mask.to(k.dtype)[:, None, :, None]
            k, v = k * m, v * m
        E = self.E[:, :T].to(k.dtype)
        Fm = E if self.F is None else self.F[:, :T].to(v.dtype)
        k = torch.matmul(E, k)  # (B, H, k, d)
        v = torch.matmul(Fm, v)
        y = F.scaled_dot_product_attention(q, k, v,
                                           dropout_p=self.dropout if self.training else 0.0)
        return mask_padding(self.out_proj(self._merge(y)), padding_mask)
