"""Softmax self-attention as a mixer (``"attention"``): the reference and hybrid layer.

Quadratic in T. Its projections are named and shaped like HF wav2vec2's attention
(``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, C -> C with biases), so weights copy
straight across; the product runs through ``F.scaled_dot_product_attention`` with the
padded keys masked out.

Example
-------
>>> import torch
>>> m = SDPAttention(hidden_size=16, num_heads=2)
>>> mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
>>> m(torch.randn(2, 5, 16), mask).shape
torch.Size([2, 5, 16])
"""

import torch
import torch.nn.functional as F
from torch import nn

from cald_speech.errors import ConfigError
from cald_speech.mixers import register_mixer
from cald_speech.mixers.base import Mixer
from cald_speech.mixers.padding import mask_padding

__all__ = ["SDPAttention", "copy_linear_"]


def copy_linear_(dst, src):
    """Copies an ``nn.Linear``'s weight and bias into another (a missing bias as zero).

    Example
    -------
    >>> a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3, bias=False)
    >>> copy_linear_(a, b)
    >>> a.bias.tolist()
    [0.0, 0.0, 0.0]
    """
    if dst.weight.shape != src.weight.shape:
        raise ConfigError(
            f"cannot copy a Linear of shape {tuple(src.weight.shape)} into one of shape "
            f"{tuple(dst.weight.shape)}"
        )
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if dst.bias is not None:
            if src.bias is not None:
                dst.bias.copy_(src.bias)
            else:
                dst.bias.zero_()
        elif src.bias is not None:
            raise ConfigError("the source Linear has a bias but the target has none")


class QKVOMixer(Mixer):
    """A mixer with attention-shaped projections q/k/v/out_proj (C -> C, with bias).

    Arguments
    ---------
    hidden_size : int
        Model width C (a multiple of ``num_heads``).
    num_heads : int
        Heads.
    bias : bool
        Projection biases.
    """

    def __init__(self, hidden_size, num_heads, bias=True):
        super().__init__(hidden_size, num_heads)
        if hidden_size % num_heads:
            raise ConfigError(
                f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}"
            )
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self._cfg["bias"] = bias

    def _heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)

    def _merge(self, y):
        b, h, t, d = y.shape
        return y.transpose(1, 2).reshape(b, t, h * d)

    @torch.no_grad()
    def init_from_attention(self, q_proj, k_proj, v_proj, out_proj):
        """Copies the four projections (exactly; a missing bias copies as zero)."""
        for dst, src in ((self.q_proj, q_proj), (self.k_proj, k_proj), (self.v_proj, v_proj),
                         (self.out_proj, out_proj)):
            copy_linear_(dst, src)


@register_mixer
class SDPAttention(QKVOMixer):
    """Multi-head softmax attention over the valid frames (``"attention"``).

    Arguments
    ---------
    hidden_size : int
        Model width C.
    num_heads : int
        Heads.
    bias : bool
        Projection biases.
    dropout : float
        Attention-probability dropout in training.

    Example
    -------
    >>> m = SDPAttention(8, 2)
    >>> m.mixer_config()
    {'name': 'attention', 'hidden_size': 8, 'num_heads': 2, 'bias': True, 'dropout': 0.0}
    """

    name = "attention"
    linear_time = False

    def __init__(self, hidden_size, num_heads, bias=True, dropout=0.0):
        super().__init__(hidden_size, num_heads, bias=bias)
        self.dropout = dropout
        self._cfg["dropout"] = dropout

    def forward(self, hidden_states, padding_mask=None):
        """(B, T, C), (B, T) mask (True = valid) -> (B, T, C); padded outputs are zero."""
        x = mask_padding(hidden_states, padding_mask)
        q, k, v = (self._heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        attn_mask = None
        if padding_mask is not None:
            keys = padding_mask.bool()
            # A row without valid frames attends everywhere instead of producing NaN.
            keys = keys | ~keys.any(dim=1, keepdim=True)
            attn_mask = keys[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return mask_padding(self.out_proj(self._merge(y)), padding_mask)
