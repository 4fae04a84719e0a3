"""Bidirectional (non-causal) kernelised linear attention (``"linear_attention"``).

``y_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps)`` over the
valid frames j of the row: O(T d^2) time and O(d^2) state per head instead of O(T^2).
The feature map ``phi`` is ``elu(x) + 1`` (Katharopoulos et al., 2020) or a learnable
Hedgehog map (Zhang et al., 2024): per head ``[softmax(x W + b), softmax(-(x W + b))]``
with ``W`` initialised to the identity, separate for queries and keys. The projections
are shaped and named like HF wav2vec2's attention, so :meth:`init_from_attention` copies
them exactly. Sums are accumulated in fp32 (fp64 for fp64 inputs).

Example
-------
>>> import torch
>>> m = LinearAttention(hidden_size=16, num_heads=2)
>>> mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
>>> m(torch.randn(2, 6, 16), mask).shape
torch.Size([2, 6, 16])
"""

import torch
import torch.nn.functional as F
from torch import nn

from cald_speech.errors import ConfigError
from cald_speech.mixers import register_mixer
from cald_speech.mixers.attention import QKVOMixer
from cald_speech.mixers.padding import mask_padding

__all__ = ["HedgehogFeatureMap", "LinearAttention"]

_FEATURE_MAPS = ("elu", "hedgehog")


class HedgehogFeatureMap(nn.Module):
    """Learnable per-head feature map: ``[softmax(xW+b), softmax(-(xW+b))]``.

    Arguments
    ---------
    num_heads : int
        Heads.
    head_dim : int
        Input features per head.
    feature_dim : int or None
        Width of ``W``'s output (``None``: ``head_dim``); the map returns twice that.

    Example
    -------
    >>> fm = HedgehogFeatureMap(2, 4)
    >>> fm(torch.randn(1, 2, 3, 4)).shape
    torch.Size([1, 2, 3, 8])
    """

    def __init__(self, num_heads, head_dim, feature_dim=None):
        super().__init__()
        feature_dim = feature_dim or head_dim
        init = torch.eye(head_dim, feature_dim).expand(num_heads, head_dim, feature_dim)
        self.weight = nn.Parameter(init.clone())
        self.bias = nn.Parameter(torch.zeros(num_heads, 1, feature_dim))

    def forward(self, x):
        """(B, H, T, d) -> (B, H, T, 2 * feature_dim), non-negative."""
        u = torch.matmul(x, self.weight.to(x.dtype)) + self.bias.to(x.dtype)
        return torch.cat([torch.softmax(u, dim=-1), torch.softmax(-u, dim=-1)], dim=-1)


@register_mixer
class LinearAttention(QKVOMixer):
    """Non-causal multi-head linear attention, masked over padding.

    Arguments
    ---------
    hidden_size : int
        Model width C.
    num_heads : int
        Heads.
    feature_map : str
        ``"elu"`` (elu+1, no parameters) or ``"hedgehog"`` (learnable).
    feature_dim : int or None
        Hedgehog feature width per head (``None``: head_dim).
    bias : bool
        Projection biases.
    eps : float
        Added to the normaliser.

    Example
    -------
    >>> m = LinearAttention(8, 2, feature_map="hedgehog")
    >>> m(torch.randn(1, 4, 8)).shape
    torch.Size([1, 4, 8])
    """

    name = "linear_attention"

    def __init__(self, hidden_size, num_heads, feature_map="elu", feature_dim=None, bias=True,
                 eps=1e-6):
        super().__init__(hidden_size, num_heads, bias=bias)
        if feature_map not in _FEATURE_MAPS:
            raise ConfigError(
                f"feature_map must be one of {_FEATURE_MAPS}, got '{feature_map}'"
            )
        self.feature_map = feature_map
        self.eps = eps
        if feature_map == "hedgehog":
            self.phi_q = HedgehogFeatureMap(num_heads, self.head_dim, feature_dim)
            self.phi_k = HedgehogFeatureMap(num_heads, self.head_dim, feature_dim)
        self._cfg.update(feature_map=feature_map, feature_dim=feature_dim, eps=eps)

    def _phi(self, x, which):
        if self.feature_map == "elu":
            return F.elu(x) + 1.0
        return (self.phi_q if which == "q" else self.phi_k)(x)

    def forward(self, hidden_states, padding_mask=None):
        """(B, T, C), (B, T) mask (True = valid) -> (B, T, C); padded outputs are zero."""
        x = mask_padding(hidden_states, padding_mask)
        dtype = x.dtype
        cd = torch.float64 if dtype == torch.float64 else torch.float32
        q, k, v = (self._heads(p(x)).to(cd) for p in (self.q_proj, self.k_proj, self.v_proj))
        fq, fk = self._phi(q, "q"), self._phi(k, "k")
        if padding_mask is not None:
            fk = fk * padding_mask.to(cd)[:, None, :, None]
        kv = torch.matmul(fk.transpose(-1, -2), v)  # (B, H, F, d)
        k_sum = fk.sum(dim=2, keepdim=True)  # (B, H, 1, F)
        num = torch.matmul(fq, kv)  # (B, H, T, d)
        den = (fq * k_sum).sum(dim=-1, keepdim=True)  # (B, H, T, 1)
        y = num / (den + self.eps)
        out = self.out_proj(self._merge(y).to(dtype))
        return mask_padding(out, padding_mask)
