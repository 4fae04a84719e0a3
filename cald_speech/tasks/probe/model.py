"""The probe model: frozen upstream layers, a learned weighted sum, a small CTC head.

As SUPERB probes an upstream: its layers are normalised (layer norm without
parameters), summed with softmax weights learned with the head, and a small head (a
bidirectional LSTM or one linear map) predicts CTC units. The upstream never trains and
stays in eval mode; only the ``lm_head`` (weights and head) has parameters to train.

Example
-------
>>> import torch
>>> from cald_speech.testing import tiny_teacher
>>> probe = ProbeModel(tiny_teacher(), vocab_size=5, layers=[1, 2], hidden_size=8)
>>> probe(torch.randn(2, 1600)).logits.shape
torch.Size([2, 79, 5])
>>> sum(p.numel() for p in probe.parameters() if p.requires_grad) > 0
True
"""

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from cald_speech.errors import ConfigError
from cald_speech.features import base_model
from cald_speech.gendistiller import LayerStudent, upstream_layers
from cald_speech.student import respect_umask

HEADS = ("lstm", "linear")


class ProbeHead(nn.Module):
    """Softmax-weighted sum of K layer-normed layers, then an LSTM or linear CTC head.

    Arguments
    ---------
    num_layers : int
        K.
    input_size : int
        Width of the layers.
    vocab_size : int
        CTC units (blank included).
    kind : str
        ``"lstm"`` (one bidirectional layer) or ``"linear"``.
    hidden_size : int
        LSTM units per direction.
    dropout : float
        Dropout on the weighted sum.
    """

    def __init__(self, num_layers, input_size, vocab_size, kind="lstm", hidden_size=256,
                 dropout=0.1):
        super().__init__()
        if kind not in HEADS:
            raise ConfigError(f"probe_head '{kind}' is not one of {list(HEADS)}")
        self.layer_weights = nn.Parameter(torch.zeros(num_layers))
        self.drop = nn.Dropout(dropout)
        self.lstm = None
        if kind == "lstm":
            self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True, bidirectional=True)
            input_size = 2 * hidden_size
        self.out = nn.Linear(input_size, vocab_size)

    def forward(self, layers, frame_mask):
        """(B, T, V) logits from K layers (B, T, C) and the (B, T) frame mask."""
        w = torch.softmax(self.layer_weights, dim=0)
        x = sum(wi * F.layer_norm(h.float(), h.shape[-1:]) for wi, h in zip(w, layers))
        x = self.drop(x)
        if self.lstm is not None:
            lengths = frame_mask.sum(dim=1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                       enforce_sorted=False)
            x, _ = self.lstm(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True,
                                                    total_length=frame_mask.shape[1])
        return self.out(x)


class ProbeModel(nn.Module):
    """A frozen upstream and a trainable CTC probe of its layers.

    Arguments
    ---------
    upstream : LayerStudent or transformers model or Student
        A layer student probes the layers it generates; a teacher, its hidden states
        ``layers``.
    vocab_size : int
        CTC units.
    layers : list of int, optional
        Teacher hidden states to probe (default: a layer student's own target layers;
        every hidden state of a teacher). Not for a layer student.
    head : str
        ``"lstm"`` or ``"linear"``.
    hidden_size : int
        LSTM units per direction.
    """

    def __init__(self, upstream, vocab_size, layers=None, head="lstm", hidden_size=256):
        super().__init__()
        if isinstance(upstream, LayerStudent):
            if layers is not None and list(layers) != upstream.target_layers:
                raise ConfigError(f"a layer student yields the teacher layers "
                                  f"{upstream.target_layers}; probe_layers must be null")
            count = len(upstream.target_layers)
        else:
            depth = base_model(upstream).config.num_hidden_layers
            layers = list(range(depth + 1)) if layers is None else list(layers)
            if any(not 0 <= i <= depth for i in layers):
                raise ConfigError(f"probe_layers {layers} out of range 0..{depth}")
            count = len(layers)
        self.layers = None if layers is None else list(layers)
        self.upstream = upstream.eval()
        for p in self.upstream.parameters():
            p.requires_grad_(False)
        width = base_model(upstream).config.hidden_size
        self.lm_head = ProbeHead(count, width, vocab_size, head, hidden_size)
        self.probe_config = {"vocab_size": vocab_size, "layers": self.layers, "head": head,
                             "hidden_size": hidden_size}

    @property
    def base_model(self):
        """The upstream's transformers encoder (CNN, frame masks)."""
        return base_model(self.upstream)

    @property
    def config(self):
        """The upstream's transformers config."""
        return self.base_model.config

    def train(self, mode=True):
        """Trains the probe only: the upstream stays in eval mode."""
        super().train(mode)
        self.upstream.eval()
        return self

    def forward(self, input_values, attention_mask=None, output_hidden_states=False,
                **kwargs):
        """``.logits`` (B, T, V) of the probe (``hidden_states`` is always None)."""
        with torch.no_grad():
            layers, mask = upstream_layers(self.upstream, input_values, attention_mask,
                                           self.layers)
        return SimpleNamespace(logits=self.lm_head(layers, mask), hidden_states=None)

    def save_pretrained(self, directory):
        """Writes ``upstream/`` (its own folder), ``probe.json`` and ``probe_head.pt``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if isinstance(self.upstream, PreTrainedModel):
            self.upstream.save_pretrained(directory / "upstream", safe_serialization=True)
        else:
            self.upstream.save_pretrained(directory / "upstream")
        (directory / "probe.json").write_text(json.dumps(self.probe_config, indent=2) + "\n")
        torch.save(self.lm_head.state_dict(), directory / "probe_head.pt")
        respect_umask(directory)
