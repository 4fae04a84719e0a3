"""The intent model: a speech encoder, masked pooling and one or two classification heads.

The model is a speech encoder — a transformers wav2vec2 / HuBERT / WavLM model, or its
converted linear-time :class:`~cald_speech.student.Student` — followed by an
:class:`IntentHead`: the encoder's final hidden state is pooled over the valid frames
(masked mean, or attentive pooling) and classified, either into intents (one head) or,
as in CALD (He & Garner, ICLR 2025), into scenario and action (two heads; the intent is
``<scenario>_<action>``). :class:`IntentModel` returns the encoder's hidden states
indexed like the encoder's own, so a student's layer i aligns with its teacher's, and
exposes the encoder's bare transformers model as ``base_model`` (frame masks, CNN
freezing and the feature cache reach it through :func:`cald_speech.features.base_model`).

A saved model is one folder, loadable without the teacher or the network::

    <folder>/encoder/               the encoder's own save_pretrained (student or transformers)
    <folder>/intent_head.json       head configuration
    <folder>/intent_head.safetensors  head weights
    <folder>/label_maps.json        intent, scenario and action labels (from train)

Example
-------
>>> import torch
>>> from cald_speech.testing import tiny_teacher
>>> labels = LabelMaps({"alarm_set": ("alarm", "set"), "play_music": ("play", "music")})
>>> encoder = tiny_teacher("wav2vec2-large-lv60", head="ctc")
>>> model = IntentModel.new(encoder, labels, tasks=("scenario", "action")).eval()
>>> out = model(torch.randn(2, 1600), output_hidden_states=True)
>>> out.logits.shape, len(out.hidden_states) == encoder.config.num_hidden_layers + 1
(torch.Size([2, 4]), True)
>>> sorted(model.predict(out.logits)[0])
['action', 'intent', 'scenario']
"""

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.utils import ModelOutput

from cald_speech.errors import ConfigError, DataError
from cald_speech.families import family_class, family_config_class
from cald_speech.features import base_model
from cald_speech.student import Student, load_model, respect_umask, supported_class
from cald_speech.tasks.intent.labels import FORMAT_VERSION, HEADS, POOLINGS, LabelMaps

logger = logging.getLogger(__name__)

ENCODER_DIR = "encoder"


HEAD_CONFIG = "intent_head.json"


HEAD_WEIGHTS = "intent_head.safetensors"


LABELS_FILE = "label_maps.json"




class MaskedMeanPooling(nn.Module):
    """Mean of the valid frames: (B, T, C), (B, T) bool → (B, C).

    Example
    -------
    >>> x = torch.tensor([[[1.], [3.], [100.]]])
    >>> MaskedMeanPooling()(x, torch.tensor([[True, True, False]]))
    tensor([[2.]])
    """

    def forward(self, hidden, mask):
        """Pools ``hidden`` over the frames where ``mask`` is True (all-padding rows → 0)."""
        m = mask.to(hidden.dtype).unsqueeze(-1)
        total = (hidden.masked_fill(~mask.unsqueeze(-1), 0.0) * m).sum(dim=1)
        return total / m.sum(dim=1).clamp(min=1.0)


class AttentivePooling(nn.Module):
    """Attention-weighted mean of the valid frames (padding gets zero weight).

    score_t = vᵀ tanh(W h_t + b); weights = softmax over the valid frames.
    (SpeechBrain's ECAPA attentive pooling batch-normalises over padded frames in
    training, so a padded batch would differ from its utterances alone.)

    Arguments
    ---------
    hidden_size : int
        Width C of the frames.
    attention_dim : int
        Width of the scoring layer.

    Example
    -------
    >>> pool = AttentivePooling(4, 8)
    >>> x, mask = torch.randn(1, 5, 4), torch.tensor([[True, True, True, False, False]])
    >>> y = x.clone(); y[:, 3:] = 1e3
    >>> torch.allclose(pool(x, mask), pool(y, mask))
    True
    """

    def __init__(self, hidden_size, attention_dim=128):
        super().__init__()
        self.proj = nn.Linear(hidden_size, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, hidden, mask):
        """Pools ``hidden`` (B, T, C) over the frames where ``mask`` (B, T) is True."""
        hidden = hidden.masked_fill(~mask.unsqueeze(-1), 0.0)
        scores = self.score(torch.tanh(self.proj(hidden))).squeeze(-1).float()
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        weights = torch.where(mask, weights, torch.zeros_like(weights))  # all-padding rows
        return (weights.unsqueeze(-1) * hidden.float()).sum(dim=1).to(hidden.dtype)


class IntentHead(nn.Module):
    """Pooling of the encoder's frames, then one linear classifier per task.

    Arguments
    ---------
    hidden_size : int
        Width of the encoder's hidden states.
    sizes : dict
        ``{task: number of labels}``, in logit order (see :data:`HEADS`).
    pooling : str
        ``mean`` (masked mean, as in CALD) or ``attentive``.
    attention_dim : int
        Width of the attentive pooling's scoring layer.
    dropout : float
        Dropout on the pooled vector.

    Example
    -------
    >>> head = IntentHead(8, {"scenario": 3, "action": 5})
    >>> logits, pooled = head(torch.randn(2, 7, 8), torch.ones(2, 7, dtype=torch.bool))
    >>> logits.shape, [p.shape[-1] for p in head.split(logits).values()]
    (torch.Size([2, 8]), [3, 5])
    """

    def __init__(self, hidden_size, sizes, pooling="mean", attention_dim=128, dropout=0.0):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling '{pooling}'; choose one of {POOLINGS}")
        tasks = tuple(sizes)
        if tasks not in HEADS.values():
            raise ConfigError(f"head tasks {tasks} are not one of {list(HEADS.values())}")
        self.hidden_size = int(hidden_size)
        self.sizes = {t: int(n) for t, n in sizes.items()}
        self.pooling = pooling
        self.attention_dim = int(attention_dim)
        self.dropout_p = float(dropout)
        if pooling == "mean":
            self.pool = MaskedMeanPooling()
        else:
            self.pool = AttentivePooling(self.hidden_size, self.attention_dim)
        self.dropout = nn.Dropout(self.dropout_p)
        self.classifiers = nn.ModuleDict(
            {t: nn.Linear(self.hidden_size, n) for t, n in self.sizes.items()}
        )

    @property
    def tasks(self):
        """The tasks, in logit order."""
        return tuple(self.sizes)

    def forward(self, hidden, mask):
        """Returns (logits of every task side by side (B, Σ labels), pooled vector (B, C))."""
        pooled = self.pool(hidden, mask)
        x = self.dropout(pooled)
        logits = torch.cat([self.classifiers[t](x) for t in self.tasks], dim=-1)
        return logits, pooled

    def split(self, logits):
        """``{task: (B, labels of task)}`` views of concatenated logits."""
        return dict(zip(self.tasks, logits.split(list(self.sizes.values()), dim=-1)))

    def config(self):
        """The constructor arguments, JSON-serialisable."""
        return {"hidden_size": self.hidden_size, "sizes": dict(self.sizes),
                "pooling": self.pooling, "attention_dim": self.attention_dim,
                "dropout": self.dropout_p}


def bare_encoder(model):
    """The bare encoder (``*Model``) of a supported model, student or transformers.

    A CTC or classification model gives its base model (its head is dropped); a
    student of one gives a student of its base model (same weights, same mixers).

    Example
    -------
    >>> from cald_speech.student import convert
    >>> from cald_speech.testing import tiny_teacher
    >>> type(bare_encoder(tiny_teacher(head="ctc"))).__name__
    'Wav2Vec2Model'
    >>> enc = bare_encoder(convert(tiny_teacher(head="ctc"), mixer="attention"))
    >>> type(enc.model).__name__, enc.cald["source_class"]
    ('Wav2Vec2Model', 'Wav2Vec2Model')
    """
    if isinstance(model, Student):
        inner = model.model
        base = inner.base_model
        if base is inner:
            return model
        cald = {**model.cald, "source_class": type(base).__name__}
        return Student(base, cald)
    if isinstance(model, IntentModel):
        return model.encoder
    supported_class(type(model).__name__)
    return model.base_model


@dataclass
class IntentOutput(ModelOutput):
    """What :class:`IntentModel` returns.

    Attributes
    ----------
    logits : torch.Tensor
        (B, Σ labels): every task's logits side by side (``IntentHead.split`` parts them).
    pooled : torch.Tensor
        (B, C) pooled encoder output.
    frame_mask : torch.Tensor
        (B, T) bool, True on valid frames.
    last_hidden_state : torch.Tensor
        (B, T, C) encoder output.
    hidden_states : tuple of torch.Tensor or None
        The encoder's hidden states (L + 1) when asked for.
    """

    logits: torch.Tensor = None
    pooled: torch.Tensor = None
    frame_mask: torch.Tensor = None
    last_hidden_state: torch.Tensor = None
    hidden_states: tuple = None


class IntentModel(nn.Module):
    """A speech encoder with an intent head, called like a transformers model.

    Arguments
    ---------
    encoder : nn.Module
        A supported transformers model or :class:`~cald_speech.student.Student`; a
        CTC or classification model is reduced to its bare encoder
        (:func:`bare_encoder`), whose final hidden state feeds the head.
    head : IntentHead
        The classifier; its sizes must match ``labels``.
    labels : LabelMaps
        The labels of the head's outputs.
    """

    def __init__(self, encoder, head, labels):
        super().__init__()
        self.encoder = bare_encoder(encoder)
        if head.hidden_size != self.encoder.config.hidden_size:
            raise ConfigError(
                f"intent head takes width {head.hidden_size}, the encoder gives "
                f"{self.encoder.config.hidden_size}"
            )
        for task, n in head.sizes.items():
            if n != labels.num_labels(task):
                raise ConfigError(
                    f"intent head has {n} {task} outputs but the label maps hold "
                    f"{labels.num_labels(task)}"
                )
        self.head = head
        self.labels = labels

    @classmethod
    def new(cls, encoder, labels, tasks=HEADS["scenario_action"], pooling="mean",
            attention_dim=128, dropout=0.0):
        """An encoder with a new (randomly initialised) head for ``labels``."""
        enc = bare_encoder(encoder)
        sizes = {t: labels.num_labels(t) for t in tasks}
        head = IntentHead(enc.config.hidden_size, sizes, pooling, attention_dim, dropout)
        return cls(enc, head, labels)

    @property
    def base_model(self):
        """The encoder's bare transformers model (CNN, masks, feature extractor)."""
        return base_model(self.encoder)

    @property
    def config(self):
        """The encoder's transformers config."""
        return self.encoder.config

    def frame_mask(self, num_frames, attention_mask, batch_size, device):
        """(B, T) bool mask of the encoder's valid frames."""
        if attention_mask is None:
            return torch.ones(batch_size, num_frames, dtype=torch.bool, device=device)
        return self.base_model._get_feature_vector_attention_mask(num_frames, attention_mask)

    def forward(self, input_values, attention_mask=None, output_hidden_states=False, **kwargs):
        """Classifies a batch.

        Arguments
        ---------
        input_values : torch.Tensor
            (B, S) waveforms, or (B, C, T') precomputed CNN features
            (:func:`cald_speech.features.enable_feature_input`).
        attention_mask : torch.Tensor, optional
            (B, S) sample mask, 1 on real samples.
        output_hidden_states : bool
            Also return the encoder's hidden states.
        **kwargs
            Passed to the encoder.

        Returns
        -------
        IntentOutput
        """
        out = self.encoder(
            input_values, attention_mask=attention_mask,
            output_hidden_states=output_hidden_states, **kwargs,
        )
        hidden = out.last_hidden_state
        mask = self.frame_mask(hidden.shape[1], attention_mask, hidden.shape[0], hidden.device)
        logits, pooled = self.head(hidden, mask)
        return IntentOutput(
            logits=logits, pooled=pooled, frame_mask=mask, last_hidden_state=hidden,
            hidden_states=out.hidden_states if output_hidden_states else None,
        )

    def split_logits(self, logits):
        """``{task: logits}`` of concatenated logits (see :meth:`IntentHead.split`)."""
        return self.head.split(logits)

    @torch.no_grad()
    def predict(self, logits):
        """Labels of the best scores: one dict (intent, scenario, action) per item.

        With one head the scenario and action are those of the predicted intent;
        with two heads the intent is that of the predicted pair.
        """
        parts = self.split_logits(logits)
        best = {t: p.argmax(dim=-1).tolist() for t, p in parts.items()}
        names = {t: self.labels.labels(t) for t in parts}
        out = []
        for i in range(logits.shape[0]):
            if "intent" in best:
                intent = names["intent"][best["intent"][i]]
                scenario, action = self.labels.parts[intent]
            else:
                scenario = names["scenario"][best["scenario"][i]]
                action = names["action"][best["action"][i]]
                intent = self.labels.intent_of(scenario, action)
            out.append({"intent": intent, "scenario": scenario, "action": action})
        return out

    @torch.no_grad()
    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory, **kwargs):
        """Writes the encoder (its own ``save_pretrained``), head and label maps.

        Arguments
        ---------
        directory : str or os.PathLike
            Output folder (created).
        **kwargs
            Ignored (accepted for transformers-style callers).
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory / ENCODER_DIR)
        state = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(state, str(directory / HEAD_WEIGHTS), metadata={"format": "pt"})
        cfg = {"format_version": FORMAT_VERSION, "encoder": ENCODER_DIR, **self.head.config()}
        (directory / HEAD_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
        (directory / LABELS_FILE).write_text(json.dumps(self.labels.to_dict(), indent=2) + "\n")
        respect_umask(directory)

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        """Loads a model saved by :meth:`save_pretrained` (eval mode, offline)."""
        head, labels = load_head(directory, device)
        encoder = load_model(Path(directory) / ENCODER_DIR, device=device)
        return cls(encoder, head, labels).to(device).eval()


def is_intent_model(folder):
    """True for a folder written by :meth:`IntentModel.save_pretrained`."""
    return (Path(folder) / HEAD_CONFIG).is_file()


def load_head(directory, device="cpu"):
    """The (head, label maps) of a saved intent model folder."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "no such model folder", "give the folder of a saved model")
    for name in (HEAD_CONFIG, HEAD_WEIGHTS, LABELS_FILE):
        if not (directory / name).is_file():
            raise DataError(
                directory, f"no {name}: not an intent model folder",
                "give a folder written by IntentModel.save_pretrained (a recipe's model/)",
            )
    try:
        cfg = json.loads((directory / HEAD_CONFIG).read_text())
        labels = LabelMaps.from_dict(json.loads((directory / LABELS_FILE).read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(directory, f"unreadable head config or label maps ({exc})",
                        "save the model again") from exc
    if cfg.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ConfigError(f"{directory / HEAD_CONFIG}: newer format than this cald-speech reads")
    head = IntentHead(cfg["hidden_size"], cfg["sizes"], cfg["pooling"],
                      cfg.get("attention_dim", 128), cfg.get("dropout", 0.0))
    try:
        head.load_state_dict(load_file(str(directory / HEAD_WEIGHTS), device=str(device)))
    except Exception as exc:  # safetensors raises its own types; shape mismatch RuntimeError
        raise DataError(directory / HEAD_WEIGHTS, f"cannot load the head weights ({exc})",
                        "save the model again") from exc
    return head.to(device), labels


def load_encoder(source):
    """The bare encoder of a model folder: intent model, student or transformers model.

    A CTC model (e.g. the ASR recipe's pretrained or fine-tuned model) gives its
    encoder; its CTC head is dropped. Returned in train mode.
    """
    from cald_speech.hub import resolve_model_source

    source = str(resolve_model_source(source))
    if not os.path.isdir(source):
        raise DataError(
            source, "model folder not found",
            "give a local model folder (save_pretrained output) or train it first",
        )
    folder = Path(source) / ENCODER_DIR if is_intent_model(source) else source
    return bare_encoder(load_model(folder)).train()


def encoder_from_config(config, family="wav2vec2"):
    """A randomly initialised bare encoder from a mapping of config values."""
    return family_class(family)(family_config_class(family)(**dict(config)))
