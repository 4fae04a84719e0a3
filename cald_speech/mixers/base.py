"""The contract every token mixer follows, so that it can replace self-attention.

A mixer maps hidden states ``(B, T, C)`` and a padding mask ``(B, T)`` (``True`` on
valid frames) to ``(B, T, C)``. Frames marked as padding may hold anything on input
and output; valid frames must not depend on them.

Example
-------
>>> import torch
>>> class Identity(Mixer):
...     name = "identity"
...     def forward(self, hidden_states, padding_mask=None):
...         return hidden_states
>>> m = Identity(hidden_size=8, num_heads=2)
>>> m(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)).shape
torch.Size([2, 5, 8])
>>> m.mixer_config()
{'name': 'identity', 'hidden_size': 8, 'num_heads': 2}
"""

import torch
from torch import nn


class Mixer(nn.Module):
    """Base class of linear-time token mixers.

    Subclasses set ``name``, store their own keyword arguments with
    ``self._cfg.update(...)`` and implement ``forward``; those that can start from a
    softmax attention implement ``init_from_attention``.

    Arguments
    ---------
    hidden_size : int
        Model width C.
    num_heads : int
        Number of heads of the attention this mixer replaces.
    """

    name = "base"
    #: Options that choose how the mixer runs (kernel path, chunking), not what it
    #: computes: they are left out of :meth:`mixer_config`, so a saved model runs on
    #: whatever kernels the machine that loads it has.
    execution_options = ()
    #: Whether cost grows linearly with the input length (softmax attention: no).
    linear_time = True

    @property
    def max_frames(self):
        """The longest input this mixer accepts, in frames (``None``: unbounded)."""
        return None

    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self._cfg = {}

    def forward(self, hidden_states, padding_mask=None):
        """Mixes tokens.

        Arguments
        ---------
        hidden_states : torch.Tensor
            (B, T, C) input.
        padding_mask : torch.Tensor or None
            (B, T) bool, ``True`` on valid frames; ``None`` means no padding.

        Returns
        -------
        torch.Tensor
            (B, T, C) output.
        """
        raise NotImplementedError

    @torch.no_grad()
    def init_from_attention(self, q_proj, k_proj, v_proj, out_proj):
        """Initialises this mixer from the projections of a softmax attention.

        Arguments
        ---------
        q_proj, k_proj, v_proj, out_proj : torch.nn.Linear
            The attention's projections (C -> C), biases optional.
        """
        raise NotImplementedError(
            f"mixer '{self.name}' cannot be initialised from attention; use init='random'"
        )

    @classmethod
    def attention_init_config(cls, hidden_size, num_heads):
        """Options a mixer needs so that :meth:`init_from_attention` can be used.

        Merge them into the build options (``build_mixer(name, C, H, **{**these,
        **yours})``); empty for mixers that need nothing special.

        Arguments
        ---------
        hidden_size : int
            Model width.
        num_heads : int
            Heads of the attention.

        Returns
        -------
        dict
        """
        return {}

    def mixer_config(self):
        """Keyword arguments that rebuild this mixer with ``build_mixer(**cfg)``.

        Without the :attr:`execution_options` (see :meth:`execution_config`).
        """
        cfg = {k: v for k, v in self._cfg.items() if k not in self.execution_options}
        return {"name": self.name, "hidden_size": self.hidden_size,
                "num_heads": self.num_heads, **cfg}

    def execution_config(self):
        """The :attr:`execution_options` this mixer was built with."""
        return {k: self._cfg[k] for k in self.execution_options if k in self._cfg}
