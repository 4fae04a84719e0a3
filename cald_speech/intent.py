"""Spoken intent classification (SLURP) with CALD: head, model, Brain, metrics, recipe.

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

:class:`IntentBrain` is the shared :class:`~cald_speech.brains.DistillBrain` with a
cross-entropy task loss, so every guidance mode of CALD works as for CTC.

Labels: the label maps are built from the train split (or come with a saved head).
References in valid/test whose label train never had are counted and reported; they
are left out of the loss and always count as errors in the accuracies.

Example
-------
>>> import torch
>>> from cald_speech.convert import tiny_teacher
>>> labels = LabelMaps({"alarm_set": ("alarm", "set"), "play_music": ("play", "music")})
>>> encoder = tiny_teacher("wav2vec2-large-lv60", head="ctc")
>>> model = IntentModel.new(encoder, labels, tasks=("scenario", "action")).eval()
>>> out = model(torch.randn(2, 1600), output_hidden_states=True)
>>> out.logits.shape, len(out.hidden_states) == encoder.config.num_hidden_layers + 1
(torch.Size([2, 4]), True)
>>> sorted(model.predict(out.logits)[0])
['action', 'intent', 'scenario']
"""

import copy
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import speechbrain as sb
import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from cald_speech.brains import RANK_KEY, DistillBrain, unwrap
from cald_speech.data.manifest import read_manifest
from cald_speech.data.pipeline import audio_dataset
from cald_speech.distill.losses import logit_kd_loss
from cald_speech.errors import ConfigError, DataError
from cald_speech.experiment import build_models
from cald_speech.families import family_class, family_config_class
from cald_speech.features import FeatureCache, base_model
from cald_speech.model_files import respect_umask
from cald_speech.recipes import (
    ASR_KEYS,
    _loader_opts,
    load_recipe_hparams,
    prepare_manifests,
    recipe_entry,
)
from cald_speech.student import Student, load_model, package_model, supported_class

logger = logging.getLogger(__name__)

#: Head layouts: the tasks each one classifies, in the order of the logits.
HEADS = {"intent": ("intent",), "scenario_action": ("scenario", "action")}
#: Pooling of the encoder's frames.
POOLINGS = ("mean", "attentive")
#: Label columns of the SLURP manifests, in the order of ``label_ids``.
LABEL_COLUMNS = ("intent", "scenario", "action")
#: Metrics a checkpoint can be kept by.
BEST_METRICS = ("sa_acc", "intent_acc")

ENCODER_DIR = "encoder"
HEAD_CONFIG = "intent_head.json"
HEAD_WEIGHTS = "intent_head.safetensors"
LABELS_FILE = "label_maps.json"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------- labels
class LabelMaps:
    """The label sets of the intent task: intents and the scenario/action of each.

    Arguments
    ---------
    parts : dict
        ``{intent: (scenario, action)}``. Labels are kept sorted, so equal label sets
        give equal indices.

    Example
    -------
    >>> labels = LabelMaps.from_rows([
    ...     {"intent": "alarm_set", "scenario": "alarm", "action": "set"},
    ...     {"intent": "alarm_query", "scenario": "alarm", "action": "query"}])
    >>> labels.labels("action"), labels.index("intent", "alarm_set")
    (['query', 'set'], 1)
    >>> labels.index("scenario", "weather")
    -1
    >>> LabelMaps.from_dict(labels.to_dict()) == labels
    True
    """

    def __init__(self, parts):
        self.parts = {str(k): (str(v[0]), str(v[1])) for k, v in sorted(dict(parts).items())}
        if not self.parts:
            raise ConfigError("the label maps need at least one intent")
        self._labels = {
            "intent": list(self.parts),
            "scenario": sorted({s for s, _ in self.parts.values()}),
            "action": sorted({a for _, a in self.parts.values()}),
        }
        self._index = {t: {x: i for i, x in enumerate(v)} for t, v in self._labels.items()}
        self._intent_of = {v: k for k, v in self.parts.items()}

    @classmethod
    def from_rows(cls, rows, source="train"):
        """Builds the maps from manifest rows with ``intent``, ``scenario``, ``action``.

        Raises
        ------
        DataError
            When one intent comes with two different (scenario, action) pairs.
        """
        parts = {}
        for row in rows:
            pair = (row["scenario"], row["action"])
            if parts.setdefault(row["intent"], pair) != pair:
                raise DataError(
                    source,
                    f"intent '{row['intent']}' appears as {parts[row['intent']]} and {pair}",
                    "the intent must be '<scenario>_<action>'; re-run the data preparation",
                )
        if not parts:
            raise DataError(source, "no labelled items", "check the data preparation step")
        return cls(parts)

    def labels(self, task):
        """Sorted labels of ``task`` (``intent``, ``scenario`` or ``action``)."""
        return list(self._labels[task])

    def num_labels(self, task):
        """Number of labels of ``task``."""
        return len(self._labels[task])

    def index(self, task, label):
        """Index of ``label`` in ``task``'s labels; -1 when train never had it."""
        return self._index[task].get(label, -1)

    def intent_of(self, scenario, action):
        """The intent of a (scenario, action) pair (``<scenario>_<action>`` if unseen)."""
        return self._intent_of.get((scenario, action), f"{scenario}_{action}")

    def to_dict(self):
        """A JSON-serialisable copy."""
        return {"format_version": FORMAT_VERSION,
                "intents": {k: list(v) for k, v in self.parts.items()}}

    @classmethod
    def from_dict(cls, d):
        """Rebuilds maps written by :meth:`to_dict`."""
        return cls({k: tuple(v) for k, v in d["intents"].items()})

    def __eq__(self, other):
        return isinstance(other, LabelMaps) and self.parts == other.parts

    def __repr__(self):
        n = {t: len(v) for t, v in self._labels.items()}
        return f"LabelMaps({n['intent']} intents, {n['scenario']} scenarios, {n['action']} actions)"


def count_unknown(rows, labels):
    """Counts the items whose labels the label maps do not know.

    Arguments
    ---------
    rows : iterable of dict
        Manifest rows with ``intent``, ``scenario`` and ``action``.
    labels : LabelMaps
        The maps (from train).

    Returns
    -------
    dict
        ``items`` (rows with any unknown label), per task the number of rows with an
        unknown label of that task, and ``labels``: the unknown labels per task.

    Example
    -------
    >>> labels = LabelMaps({"alarm_set": ("alarm", "set")})
    >>> r = count_unknown([{"intent": "alarm_stop", "scenario": "alarm", "action": "stop"}],
    ...                   labels)
    >>> r["items"], r["intent"], r["scenario"], r["labels"]["action"]
    (1, 1, 0, ['stop'])
    """
    counts = Counter()
    unknown = {t: set() for t in LABEL_COLUMNS}
    for row in rows:
        bad = [t for t in LABEL_COLUMNS if labels.index(t, row[t]) < 0]
        for t in bad:
            counts[t] += 1
            unknown[t].add(row[t])
        counts["items"] += bool(bad)
    return {"items": counts["items"], **{t: counts[t] for t in LABEL_COLUMNS},
            "labels": {t: sorted(v) for t, v in unknown.items()}}


# ---------------------------------------------------------------------------- pooling
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


# ---------------------------------------------------------------------------- head
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


# ---------------------------------------------------------------------------- model
def bare_encoder(model):
    """The bare encoder (``*Model``) of a supported model, student or transformers.

    A CTC or classification model gives its base model (its head is dropped); a
    student of one gives a student of its base model (same weights, same mixers).

    Example
    -------
    >>> from cald_speech.convert import convert, tiny_teacher
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
    source = str(source)
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


# ---------------------------------------------------------------------------- loss
def classification_loss(parts, targets, valid):
    """Cross-entropy averaged over the tasks; unknown targets (-1) are left out.

    Arguments
    ---------
    parts : dict
        ``{task: (B, labels) logits}``.
    targets : dict
        ``{task: (B,) label indices}``, -1 for labels train never had.
    valid : torch.Tensor
        (B,) bool, False for items to leave out (unreadable audio).

    Example
    -------
    >>> parts = {"intent": torch.tensor([[0., 0.], [9., -9.]])}
    >>> loss = classification_loss(parts, {"intent": torch.tensor([0, -1])},
    ...                            torch.tensor([True, True]))
    >>> round(float(loss), 4)  # only the first item counts: log 2
    0.6931
    """
    losses = []
    for task, logits in parts.items():
        target = targets[task].to(logits.device)
        keep = valid & (target >= 0)
        if keep.any():
            losses.append(F.cross_entropy(logits[keep].float(), target[keep]))
    if not losses:
        return sum(p.sum() for p in parts.values()) * 0.0
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------------- metrics
class IntentMetrics:
    """Accuracies and confusions of an evaluation split.

    Every item counts: an item whose reference label is unknown to the label maps, or
    whose audio could not be read, is an error for that label.

    Arguments
    ---------
    labels : LabelMaps
        The model's labels (to count unknown references).

    Example
    -------
    >>> labels = LabelMaps({"alarm_set": ("alarm", "set"), "alarm_query": ("alarm", "query")})
    >>> m = IntentMetrics(labels)
    >>> ref = [{"intent": "alarm_set", "scenario": "alarm", "action": "set"},
    ...        {"intent": "alarm_stop", "scenario": "alarm", "action": "stop"}]
    >>> hyp = [ref[0], {"intent": "alarm_query", "scenario": "alarm", "action": "query"}]
    >>> m.append(["a", "b"], ref, hyp)
    >>> s = m.summarize()
    >>> s["intent_acc"], s["scenario_acc"], s["action_acc"], s["sa_acc"], s["unknown_intent"]
    (50.0, 100.0, 50.0, 75.0, 1)
    >>> m.confusions()
    [('alarm_stop', 'alarm_query', 1)]
    """

    def __init__(self, labels):
        self.labels = labels
        self.items = []

    def append(self, ids, refs, hyps):
        """Adds items: ids, reference and predicted label dicts (``None`` = unreadable)."""
        for uid, ref, hyp in zip(ids, refs, hyps):
            self.items.append((uid, dict(ref), None if hyp is None else dict(hyp)))

    def summarize(self):
        """``n``, accuracies in percent (``sa_acc``: mean of scenario and action, CALD's
        SLURP metric), unknown references per task and unreadable items."""
        n = len(self.items)
        stats = {"n": n}
        for task in LABEL_COLUMNS:
            right = sum(h is not None and h[task] == r[task] for _, r, h in self.items)
            stats[f"{task}_acc"] = 100.0 * right / n if n else 0.0
            stats[f"unknown_{task}"] = sum(
                self.labels.index(task, r[task]) < 0 for _, r, _ in self.items
            )
        stats["sa_acc"] = (stats["scenario_acc"] + stats["action_acc"]) / 2
        stats["unreadable"] = sum(h is None for _, _, h in self.items)
        return stats

    def confusions(self, top=10):
        """The most frequent (reference intent, predicted intent, count) errors."""
        pairs = Counter(
            (r["intent"], h["intent"] if h is not None else "<unreadable>")
            for _, r, h in self.items if h is None or h["intent"] != r["intent"]
        )
        ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(r, h, c) for (r, h), c in ranked[:top]]

    def write(self, path, split, extra=None, top=10):
        """Writes ``path`` (.txt: summary + per item), its .json and ``*_confusions.txt``."""
        stats = {**self.summarize(), **(extra or {})}
        base = os.path.splitext(str(path))[0]
        os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
        lines = [
            f"split: {split}",
            f"items: {stats['n']} (unreadable audio: {stats['unreadable']})",
            f"intent accuracy:   {stats['intent_acc']:.2f} %",
            f"scenario accuracy: {stats['scenario_acc']:.2f} %",
            f"action accuracy:   {stats['action_acc']:.2f} %",
            f"mean of scenario and action accuracy (sa_acc): {stats['sa_acc']:.2f} %",
            "references with labels unseen in train (left out of the loss, counted as "
            f"errors): intent {stats['unknown_intent']}, scenario {stats['unknown_scenario']}, "
            f"action {stats['unknown_action']}",
            "",
            "ID reference_intent predicted_intent",
        ]
        for uid, r, h in self.items:
            hyp = h["intent"] if h is not None else "<unreadable>"
            lines.append(f"{uid} {r['intent']} {hyp}{'' if hyp == r['intent'] else '  *'}")
        Path(base + ".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        confusions = self.confusions(top)
        per_ref = Counter(r["intent"] for _, r, _ in self.items)
        conf_lines = [f"Most confused intents ({split}): reference -> predicted, count"]
        for r, h, c in confusions:
            conf_lines.append(f"{r} -> {h}  {c}  ({100.0 * c / per_ref[r]:.1f}% of {r})")
        if not confusions:
            conf_lines.append("(no errors)")
        Path(base + "_confusions.txt").write_text("\n".join(conf_lines) + "\n", encoding="utf-8")
        out = {k: (float(v) if isinstance(v, float) else v) for k, v in stats.items()}
        out["confusions"] = [list(x) for x in confusions]
        Path(base + ".json").write_text(json.dumps(out, indent=2, default=float) + "\n")
        return stats


# ---------------------------------------------------------------------------- brain
class IntentBrain(DistillBrain):
    """Intent classification (one head, or scenario + action) with CALD distillation.

    The model is an :class:`IntentModel`; its ``head`` is the task head. Extra hparams:
    ``best_metric`` (``sa_acc`` or ``intent_acc``: the checkpoint kept),
    ``metrics_file`` pattern (``{split}`` filled in), ``confusion_top``.
    Batches carry ``label_ids`` ((B, 3): intent, scenario, action; -1 = unknown) and
    the reference strings ``intent``, ``scenario``, ``action``.
    """

    TASK_DEFAULTS = {"best_metric": "sa_acc", "metrics_file": None, "confusion_top": 10}

    def run_model(self, model, input_values, attention_mask, hidden_states):
        """Returns (hidden states or None, concatenated task logits)."""
        out = model(
            input_values, attention_mask=attention_mask, output_hidden_states=hidden_states
        )
        return (out.hidden_states if hidden_states else None), out.logits

    def head_module(self, model):
        """The intent head (pooling and classifiers)."""
        return unwrap(model).head

    def _layout(self):
        return unwrap(self.modules.model)

    def task_loss(self, logits, frame_mask, batch, stage):
        """Cross-entropy per task (mean over tasks) over readable items with known labels."""
        model = self._layout()
        parts = model.split_logits(logits)
        ids = batch.label_ids.data
        targets = {t: ids[:, LABEL_COLUMNS.index(t)] for t in parts}
        ok = frame_mask.any(dim=1)
        loss = classification_loss(parts, targets, ok)
        if stage != sb.Stage.TRAIN:
            hyps = model.predict(logits.detach())
            hyps = [h if bool(k) else None for h, k in zip(hyps, ok.tolist())]
            refs = [dict(zip(LABEL_COLUMNS, x))
                    for x in zip(batch.intent, batch.scenario, batch.action)]
            self.metrics.append(batch.id, refs, hyps)
        return loss

    def kd_loss(self, student_logits, teacher_logits, frame_mask):
        """KL at temperature τ per task (mean over tasks), over readable items."""
        model = self._layout()
        ok = frame_mask.any(dim=1)[:, None]
        s, t = model.split_logits(student_logits), model.split_logits(teacher_logits)
        tau = self.hparams.kd_temperature
        terms = [logit_kd_loss(s[k][:, None], t[k][:, None], ok, tau) for k in s]
        return torch.stack(terms).mean()

    def on_stage_start(self, stage, epoch=None):
        """Fresh metrics for valid/test."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.metrics = IntentMetrics(self._layout().labels)

    def stage_metrics(self):
        """Intent, scenario and action accuracy, their mean, and the counts."""
        return self.metrics.summarize()

    def best_metric(self):
        """Checkpoints are ranked by ``best_metric`` (default ``sa_acc``), highest first."""
        return self.hparams.best_metric, "max"

    def write_stage_files(self, split, stats):
        """``metrics_file`` (summary and per-item lines), its JSON and the confusions."""
        pattern = self.hparams.metrics_file
        if not pattern:
            return
        metric_keys = self.stage_metrics()
        extra = {k: v for k, v in stats.items() if k not in metric_keys}
        self.metrics.write(pattern.format(split=split), split, extra,
                           top=self.hparams.confusion_top)


# ---------------------------------------------------------------------------- data
def intent_dataset(csv_path, labels, sorting="ascending", max_duration=None, min_duration=0.0):
    """A SLURP manifest as a dataset with ``sig``, ``ok``, labels and ``label_ids``.

    Returns
    -------
    dataset : DynamicItemDataset
        Outputs ``id, sig, ok, duration, intent, scenario, action, label_ids``.
    report : dict
        :func:`~cald_speech.data.pipeline.audio_dataset`'s report plus ``unknown``
        (:func:`count_unknown` over the kept items).
    """
    ds, report = audio_dataset(
        csv_path, required=LABEL_COLUMNS, sorting=sorting,
        max_duration=max_duration, min_duration=min_duration,
    )

    @sb.utils.data_pipeline.takes(*LABEL_COLUMNS)
    @sb.utils.data_pipeline.provides("label_ids")
    def label_pipeline(*values):
        return torch.LongTensor([labels.index(t, v) for t, v in zip(LABEL_COLUMNS, values)])

    ds.add_dynamic_item(label_pipeline)
    ds.set_output_keys(["id", "sig", "ok", "wav", "duration", *LABEL_COLUMNS, "label_ids"])
    report["unknown"] = count_unknown((ds.data[i] for i in ds.data_ids), labels)
    return ds, report


def read_prep_report(manifest_folder, splits):
    """Skipped recordings per split, as recorded by the SLURP preparation."""
    from cald_speech.data.slurp import STATE_FILE

    path = os.path.join(manifest_folder, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f).get("splits", {})
    except (OSError, ValueError):
        return {}
    return {s: dict(state.get(s, {}).get("summary", {}).get("skipped", {})) for s in splits}


# ---------------------------------------------------------------------------- recipe
#: Keys the intent recipe reads (typos of these fail early).
INTENT_KEYS = (ASR_KEYS - {"tokenizer", "text_column", "normalize_text", "wer_file"}) | {
    "heads", "pooling", "attention_dim", "head_dropout", "best_metric", "metrics_file",
    "confusion_top", "initial_folder",
}


class _Heads:
    """Heads by source folder: a saved intent model's own, or one new head per source
    (so a trajectory teacher and its student start from the same head)."""

    def __init__(self, hp, labels):
        heads = hp.get("heads", "scenario_action")
        if heads not in HEADS:
            raise ConfigError(f"unknown heads '{heads}'; choose one of {list(HEADS)}")
        self.tasks = HEADS[heads]
        self.pooling = hp.get("pooling", "mean")
        self.attention_dim = hp.get("attention_dim", 128)
        self.dropout = hp.get("head_dropout", 0.0)
        self.labels = labels
        self._cache = {}

    def model(self, encoder, source):
        """``encoder`` + a copy of the head of ``source`` (``None``: a new head)."""
        key = None if source is None else os.path.abspath(str(source))
        if key is None or key not in self._cache:
            if key is not None and is_intent_model(key):
                head, labels = load_head(key)
                if head.pooling != self.pooling or head.tasks != self.tasks:
                    logger.warning(
                        "%s: keeping its head (%s pooling, tasks %s); the hparams' "
                        "pooling/heads apply to new heads only", key, head.pooling, head.tasks,
                    )
                head.dropout.p = head.dropout_p = float(self.dropout)
            else:
                enc = bare_encoder(encoder)
                head = IntentModel.new(enc, self.labels, self.tasks, self.pooling,
                                       self.attention_dim, self.dropout).head
                labels = self.labels
            if key is None:
                return IntentModel(encoder, head, labels)
            self._cache[key] = (head, labels)
        head, labels = self._cache[key]
        return IntentModel(encoder, copy.deepcopy(head), labels)


def _check_labels(model, teacher, train_labels, train_csv):
    if teacher is not None and teacher.labels != model.labels:
        raise ConfigError(
            f"teacher and student label maps differ ({teacher.labels} vs {model.labels}); "
            "distil from a teacher trained on the same train split"
        )
    missing = sorted(set(train_labels.parts) - set(model.labels.parts))
    if missing:
        raise ConfigError(
            f"the model's head was trained without intent(s) {missing[:5]} of {train_csv}; "
            "start from an encoder-only folder (a new head) or the same train split"
        )


def build_intent_models(hp, labels):
    """(model, teacher or None, guidance or None, waypoint teacher loader) for ``mode``.

    ``finetune``: ``model_source`` (an intent model, a student, or a transformers
    model, e.g. the ASR recipe's CTC model, whose encoder is used) or a new encoder from
    ``model_config``; a new head unless the source has one. CALD modes: encoders from
    :func:`cald_speech.experiment.build_models` (student = convert(teacher encoder)),
    each with a copy of its source's head: for target/hybrid/unguided the fine-tuned
    teacher's, for trajectory/waypoint the pretrained start's (a new head shared by
    student and co-trained teacher when that folder has none).
    """
    heads = _Heads(hp, labels)
    mode = hp.get("mode")
    if mode == "finetune":
        if hp.get("model_source"):
            src = hp["model_source"]
            return heads.model(load_encoder(src), src), None, None, None
        if hp.get("model_config"):
            enc = encoder_from_config(hp["model_config"], hp.get("model_family", "wav2vec2"))
            return heads.model(enc, None), None, None, None
        raise ConfigError("mode 'finetune' needs model_source or model_config")
    enc, t_enc, guidance, loader = build_models(hp, load_encoder)
    if mode in ("target", "hybrid", "unguided"):
        t_src = hp.get("teacher_source")
        s_src = hp.get("student_source") or t_src
        if mode != "unguided" and not is_intent_model(t_src):
            raise ConfigError(
                f"teacher_source {t_src} is not a fine-tuned intent model; give the "
                "model/ folder of the intent finetune recipe"
            )
    else:
        t_src = hp.get("pretrained_source")
        s_src = hp.get("student_source") or t_src
    model = heads.model(enc, s_src)
    teacher = heads.model(t_enc, t_src).eval() if t_enc is not None else None
    if loader is not None:
        loader = partial(load_waypoint_teacher, labels=model.labels)
    return model, teacher, guidance, loader


def load_waypoint_teacher(path, labels):
    """A waypoint (a saved intent model) as teacher; its labels must be ``labels``."""
    teacher = IntentModel.from_pretrained(path)
    if teacher.labels != labels:
        raise ConfigError(f"waypoint {path}: label maps differ from the student's")
    return teacher


def intent_main(argv=None):
    """Command-line entry of the intent recipe."""
    return recipe_entry(run_intent, argv)


def run_intent(argv):
    """Runs the SLURP intent recipe (teacher fine-tuning or CALD).

    Returns
    -------
    dict
        Per test split: accuracies (intent, scenario, action, ``sa_acc``), counts of
        unknown labels and unreadable items, and the mean of every loss term.
    """
    hp, run_opts = load_recipe_hparams(argv, INTENT_KEYS)
    hp.setdefault("data_format", "slurp")
    best = hp.get("best_metric", "sa_acc")
    if best not in BEST_METRICS:
        raise ConfigError(f"best_metric '{best}' is not one of {BEST_METRICS}")
    if len(hp["train_splits"]) != 1 or len(hp["valid_splits"]) != 1:
        raise ConfigError("give one train split and one valid split")
    csvs = prepare_manifests(hp)
    splits = [*hp["train_splits"], *hp["valid_splits"], *hp["test_splits"]]
    skipped = read_prep_report(hp["manifest_folder"], splits)
    for split, counts in skipped.items():
        if counts:
            logger.warning("%s: recordings skipped in preparation: %s", split, counts)
    train_csv = csvs[hp["train_splits"][0]]
    train_labels = LabelMaps.from_rows(
        read_manifest(train_csv, ("ID", "duration", "wav", *LABEL_COLUMNS)), train_csv)
    model, teacher, guidance, loader = build_intent_models(hp, train_labels)
    _check_labels(model, teacher, train_labels, train_csv)
    labels = model.labels
    logger.info("labels: %r", labels)

    def make(split, sorting):
        ds, report = intent_dataset(
            csvs[split], labels, sorting, hp.get("max_duration"), hp.get("min_duration", 0.0)
        )
        unk = report["unknown"]
        if unk["items"]:
            logger.warning(
                "%s: %d item(s) with labels unseen in train %s: left out of the loss, "
                "counted as errors", split, unk["items"], unk["labels"],
            )
        if report["skipped"]:
            logger.warning("%s: %d unusable item(s) skipped", split, report["skipped"])
        return ds, report

    train, _ = make(hp["train_splits"][0], hp.get("sorting", "ascending"))
    valid, _ = make(hp["valid_splits"][0], "ascending")
    tests = {s: make(s, "ascending") for s in hp["test_splits"]}

    if hp["mode"] == "finetune" and hp.get("initial_folder"):
        folder = hp["initial_folder"]
        if sb.utils.distributed.if_main_process() and not is_intent_model(folder):
            model.save_pretrained(folder)  # the start of the trajectory, head included
    hp["checkpointer"].add_recoverable("model", model)
    cache = FeatureCache(hp["feature_cache_folder"]) if hp.get("cache_features", True) else None
    brain_hp = {**hp, "guidance": guidance, "feature_cache": cache, "teacher_loader": loader}
    brain = IntentBrain(
        modules={"model": model}, hparams=brain_hp, teacher=teacher,
        run_opts=run_opts, checkpointer=hp["checkpointer"],
    )
    brain.fit(
        hp["epoch_counter"], train, valid,
        train_loader_kwargs=_loader_opts(hp, train, True),
        valid_loader_kwargs=_loader_opts(hp, valid, False),
    )
    results = {}
    for split, (ds, report) in tests.items():
        stats = brain.evaluate_split(split, ds, max_key=RANK_KEY,
                                     test_loader_kwargs=_loader_opts(hp, ds, False))
        results[split] = {
            **stats,
            "skipped_audio": report["skipped"],
            "skipped_recordings": sum(skipped.get(split, {}).values()),
        }
    if sb.utils.distributed.if_main_process():
        folder = hp.get("package_folder") or os.path.join(hp["output_folder"], "model")
        package_model(
            brain.modules.model, folder,
            info={"mode": hp["mode"], "updates": brain.optimizer_step, "results": results,
                  "bad_items": brain.bad_items_total, "skipped_in_preparation": skipped,
                  "best_metric": best},
        )
        logger.info("packaged model: %s", folder)
    return results
