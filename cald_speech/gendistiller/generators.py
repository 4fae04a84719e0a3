"""Layer generators: what turns a small encoder's output into the teacher's target layers.

Three heads share one interface, ``forward(encoded, frame_mask, targets=None)`` ->
list of K tensors ``(B, T, C_teacher)``, one per target layer:

- :class:`ParallelHeads` (DistilHuBERT): one linear projection per target layer, all
  at once; ``targets`` is ignored.
- :class:`LayerGenerator` with ``time_mixer="attention"`` (GenDistiller as published):
  a transformer over the flattened (layer step k, frame t) tokens whose two-dimensional
  attention is causal over the layer axis and bidirectional over time: token (k, t) sees
  (k', t') iff k' <= k. Step k's input is the encoder output, a learned layer embedding
  and the previous layer: the teacher's (teacher forcing, given ``targets``) or its own
  prediction (autoregressive generation, ``targets=None``; keys and values of earlier
  steps are cached, so each step costs one pass over its own frames).
- :class:`LayerGenerator` with any other registered mixer (the linear-time
  GenDistiller): the axial form of the same visibility. A shared stack of blocks is
  applied once per layer step to a residual state that carries the history over layers
  (``s_k = blocks(s_{k-1} + z_k)``); time is mixed by the bidirectional linear-time mixer.

Padding: frames outside ``frame_mask`` never influence valid frames; an item with no
valid frame (unreadable audio) gives finite outputs.

Example
-------
>>> import torch
>>> gen = LayerGenerator(num_steps=3, hidden_size=16, target_size=12, num_heads=2,
...                      depth=1, ffn_size=32).eval()
>>> enc, mask = torch.randn(2, 7, 16), torch.ones(2, 7, dtype=torch.bool)
>>> [tuple(y.shape) for y in gen(enc, mask)]
[(2, 7, 12), (2, 7, 12), (2, 7, 12)]
"""

import torch
import torch.nn.functional as F
from torch import nn

from cald_speech.errors import ConfigError
from cald_speech.mixers import build_mixer


def _valid_keys(frame_mask):
    # Items without any valid frame attend to all of theirs (outputs unused, but finite).
    empty = ~frame_mask.any(dim=1, keepdim=True)
    return frame_mask | empty


class LayerCausalAttention(nn.Module):
    """Multi-head attention over (layer step, frame) tokens, causal over the steps.

    Arguments
    ---------
    hidden_size : int
        Width C.
    num_heads : int
        Heads (C must be a multiple).
    dropout : float
        Attention dropout (training only).

    Example
    -------
    >>> att = LayerCausalAttention(8, 2)
    >>> x, mask = torch.randn(1, 2, 5, 8), torch.ones(1, 5, dtype=torch.bool)
    >>> y, cache = att(x, mask)
    >>> y.shape, cache[0].shape
    (torch.Size([1, 2, 5, 8]), torch.Size([1, 2, 10, 4]))
    """

    def __init__(self, hidden_size, num_heads, dropout=0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(f"generator width {hidden_size} is not a multiple of "
                              f"{num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x, frame_mask, past=None):
        """Attends the S new steps ``x`` (B, S, T, C) to themselves and to ``past``.

        Arguments
        ---------
        x : torch.Tensor
            (B, S, T, C) tokens of S consecutive layer steps.
        frame_mask : torch.Tensor
            (B, T) bool, True on valid frames.
        past : tuple of torch.Tensor, optional
            Cached (keys, values), each (B, H, P*T, C/H), of the P steps before these.

        Returns
        -------
        out : torch.Tensor
            (B, S, T, C).
        cache : tuple of torch.Tensor
            (keys, values) of all P + S steps.
        """
        b, s, t, c = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(b, s, t, 3, h, c // h).permute(3, 0, 4, 1, 2, 5)
        k, v = k.reshape(b, h, s * t, c // h), v.reshape(b, h, s * t, c // h)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        p = k.shape[2] // t - s
        keys_ok = _valid_keys(frame_mask)
        drop = self.dropout if self.training else 0.0
        # Step i sees the keys of steps <= p + i: a prefix, so each step is one call with
        # a key-padding mask only (no (S*T) x ((P+S)*T) mask is ever built).
        out = torch.stack([
            F.scaled_dot_product_attention(
                q[:, :, i], k[:, :, : (p + i + 1) * t], v[:, :, : (p + i + 1) * t],
                attn_mask=keys_ok.repeat(1, p + i + 1)[:, None, None, :], dropout_p=drop)
            for i in range(s)], dim=2)                                  # (B, H, S, T, d)
        out = out.permute(0, 2, 3, 1, 4).reshape(b, s, t, c)
        return self.out_proj(out), (k, v)


class GeneratorBlock(nn.Module):
    """Pre-norm block: ``x + mix(LN(x))``, then ``x + FFN(LN(x))``.

    ``mixer`` is a :class:`LayerCausalAttention` (inputs (B, S, T, C)) or a
    :class:`~cald_speech.mixers.Mixer` (inputs (B, T, C), one layer step).
    """

    def __init__(self, mixer, hidden_size, ffn_size, dropout=0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, ffn_size), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(ffn_size, hidden_size))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, frame_mask, past=None):
        """One block; returns (output, attention cache or None)."""
        if isinstance(self.mixer, LayerCausalAttention):
            mixed, cache = self.mixer(self.norm1(x), frame_mask, past)
        else:
            mixed, cache = self.mixer(self.norm1(x), frame_mask), None
        x = x + self.drop(mixed)
        return x + self.drop(self.ffn(self.norm2(x))), cache


class LayerGenerator(nn.Module):
    """Generates K teacher layers one after another (GenDistiller).

    Arguments
    ---------
    num_steps : int
        K, the number of target layers.
    hidden_size : int
        Width of the generator (the encoder's output width).
    target_size : int
        Width of the teacher's layers.
    num_heads : int
        Heads of the time mixer.
    depth : int
        Blocks of the generator (shared by every layer step).
    ffn_size : int
        Inner width of each block's feed-forward net.
    time_mixer : str
        ``"attention"`` (two-dimensional attention, as published) or a registered
        mixer name (e.g. ``"bimamba2"``: linear in time).
    mixer_options : dict, optional
        Options of that mixer.
    dropout : float
        Dropout of the blocks.
    """

    def __init__(self, num_steps, hidden_size, target_size, num_heads=4, depth=2,
                 ffn_size=1024, time_mixer="attention", mixer_options=None, dropout=0.1):
        super().__init__()
        if num_steps < 1 or depth < 1:
            raise ConfigError(f"a generator needs >= 1 step and block, got {num_steps} "
                              f"steps and depth {depth}")
        self.num_steps = num_steps
        self.time_mixer = time_mixer
        self.step_embed = nn.Embedding(num_steps, hidden_size)
        self.in_norm = nn.LayerNorm(target_size)
        self.in_proj = nn.Linear(target_size, hidden_size)

        def mixer():
            if time_mixer == "attention":
                return LayerCausalAttention(hidden_size, num_heads, dropout)
            return build_mixer(time_mixer, hidden_size, num_heads, **(mixer_options or {}))

        self.blocks = nn.ModuleList(
            GeneratorBlock(mixer(), hidden_size, ffn_size, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden_size)
        self.out_proj = nn.Linear(hidden_size, target_size)
        nn.init.normal_(self.step_embed.weight, std=0.02)

    @property
    def linear_time(self):
        """Whether the cost grows linearly with the number of frames."""
        return self.time_mixer != "attention" and all(
            getattr(b.mixer, "linear_time", False) for b in self.blocks)

    def step_input(self, encoded, k, previous):
        """z_k: the encoder output, the embedding of step k and the previous layer."""
        z = encoded + self.step_embed.weight[k]
        if previous is not None:
            z = z + self.in_proj(self.in_norm(previous))
        return z

    def forward(self, encoded, frame_mask, targets=None):
        """The K generated layers.

        Arguments
        ---------
        encoded : torch.Tensor
            (B, T, C) encoder output.
        frame_mask : torch.Tensor
            (B, T) bool, True on valid frames.
        targets : sequence of torch.Tensor, optional
            The teacher's K target layers (teacher forcing: step k reads target k-1);
            ``None`` generates autoregressively from the generator's own predictions.

        Returns
        -------
        list of torch.Tensor
            K tensors (B, T, target_size).
        """
        if targets is not None and len(targets) != self.num_steps:
            raise ConfigError(f"{len(targets)} target layers for a generator of "
                              f"{self.num_steps} steps")
        if self.time_mixer == "attention" and targets is not None:
            return self._attention_parallel(encoded, frame_mask, targets)
        return self._stepwise(encoded, frame_mask, targets)

    def _output(self, state):
        return self.out_proj(self.out_norm(state))

    def _attention_parallel(self, encoded, frame_mask, targets):
        # Teacher forcing: every step's input is known, so all steps run in one pass.
        z = torch.stack([self.step_input(encoded, k, targets[k - 1] if k else None)
                         for k in range(self.num_steps)], dim=1)
        for block in self.blocks:
            z, _ = block(z, frame_mask)
        return list(self._output(z).unbind(dim=1))

    def _stepwise(self, encoded, frame_mask, targets):
        outputs, previous = [], None
        caches = [None] * len(self.blocks)
        state = torch.zeros_like(encoded)
        for k in range(self.num_steps):
            z = self.step_input(encoded, k, previous)
            if self.time_mixer == "attention":
                x = z[:, None]
                for i, block in enumerate(self.blocks):
                    x, caches[i] = block(x, frame_mask, caches[i])
                state = x[:, 0]
            else:  # the residual state carries the history over layer steps
                x = state + z
                for block in self.blocks:
                    x, _ = block(x, frame_mask)
                state = x
            outputs.append(self._output(state))
            previous = outputs[-1] if targets is None else targets[k]
        return outputs


class ParallelHeads(nn.Module):
    """DistilHuBERT's prediction heads: one linear map per target layer, no generation.

    Arguments
    ---------
    num_steps : int
        K, the number of target layers.
    hidden_size : int
        Encoder output width.
    target_size : int
        Width of the teacher's layers.

    Example
    -------
    >>> heads = ParallelHeads(3, 16, 12)
    >>> [tuple(y.shape) for y in heads(torch.randn(2, 7, 16), None)]
    [(2, 7, 12), (2, 7, 12), (2, 7, 12)]
    """

    linear_time = True

    def __init__(self, num_steps, hidden_size, target_size):
        super().__init__()
        self.num_steps = num_steps
        self.proj = nn.Linear(hidden_size, num_steps * target_size)

    def forward(self, encoded, frame_mask, targets=None):
        """The K predicted layers (``targets`` is accepted and ignored)."""
        return list(self.proj(encoded).chunk(self.num_steps, dim=-1))


__all__ = ["GeneratorBlock", "LayerCausalAttention", "LayerGenerator", "ParallelHeads"]
