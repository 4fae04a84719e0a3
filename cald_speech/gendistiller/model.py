"""Layer students: a small encoder cut from the teacher, and a head that yields its layers.

:func:`build_layer_student` makes a :class:`LayerStudent` from a wav2vec2 / HuBERT / WavLM
teacher: the teacher's CNN and feature projection (copied, frozen), its positional
convolution and first ``encoder_layers`` transformer layers (copied, trained; their
attention optionally replaced by a linear-time mixer, started from the attention's
weights), and a head that produces the target teacher layers: a
:class:`~cald_speech.gendistiller.generators.LayerGenerator` (GenDistiller) or
:class:`~cald_speech.gendistiller.generators.ParallelHeads` (the DistilHuBERT baseline).

A saved layer student is a folder: ``encoder/`` (a student folder,
:meth:`cald_speech.student.Student.save_pretrained`), ``gendistiller.json`` (what the head
is and which teacher layers it yields) and ``head.safetensors``.

Example
-------
>>> import tempfile, torch
>>> from cald_speech.testing import tiny_teacher
>>> student = build_layer_student(tiny_teacher(), target_layers=[1, 2],
...                               encoder_layers=1).eval()
>>> out = student(torch.randn(1, 1600))
>>> len(out.layers), out.layers[0].shape[-1]
(2, 32)
>>> with tempfile.TemporaryDirectory() as folder:
...     student.save_pretrained(folder)
...     again = LayerStudent.from_pretrained(folder)
>>> torch.equal(again(torch.ones(1, 1600)).layers[1], student(torch.ones(1, 1600)).layers[1])
True
"""

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cald_speech.errors import ConfigError, DataError
from cald_speech.families import family_class
from cald_speech.features import base_model, freeze_feature_encoder
from cald_speech.gendistiller.generators import LayerGenerator, ParallelHeads
from cald_speech.student import Student, convert, load_model, model_family, respect_umask
from cald_speech.student.files import load_weights

#: What a layer student's head is: generated layers, or DistilHuBERT's parallel heads.
ARCHITECTURES = ("gendistiller", "distilhubert")
INFO_NAME = "gendistiller.json"
HEAD_WEIGHTS = "head.safetensors"
FORMAT_VERSION = 1
_HEADS = {"LayerGenerator": LayerGenerator, "ParallelHeads": ParallelHeads}


def default_target_layers(num_layers):
    """The teacher layers a student yields by default: the ends of the depth's thirds.

    Example
    -------
    >>> default_target_layers(12), default_target_layers(24), default_target_layers(4)
    ([4, 8, 12], [8, 16, 24], [1, 3, 4])
    """
    if num_layers < 3:
        return list(range(1, num_layers + 1))
    return sorted({round(num_layers * k / 3) for k in (1, 2, 3)})


def check_target_layers(layers, num_layers):
    """``layers`` as a list of increasing teacher layers in 1..L, or a ConfigError."""
    layers = default_target_layers(num_layers) if layers is None else list(layers)
    if not layers or any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
        raise ConfigError(f"target_layers must be a list of layer numbers, got {layers!r}")
    if layers != sorted(set(layers)) or not 1 <= layers[0] <= layers[-1] <= num_layers:
        raise ConfigError(f"target_layers {layers} must increase within 1..{num_layers} "
                          f"(the teacher's layers; 0 is the CNN projection)")
    return layers


@dataclass
class LayerOutput:
    """What a layer student returns."""

    #: K tensors (B, T, C_teacher), one per target layer.
    layers: list
    #: (B, T) bool, True on valid frames.
    frame_mask: torch.Tensor
    #: (B, T, C) output of the student's encoder.
    encoded: torch.Tensor


def truncated_encoder(teacher, num_layers):
    """A copy of the teacher's encoder model with only its first ``num_layers`` layers.

    SpecAugment, LayerDrop and the feature projection's dropout are off (the student's
    targets are clean layers, and its front end is the teacher's, frozen).
    """
    base = base_model(teacher)
    depth = base.config.num_hidden_layers
    if not 1 <= num_layers <= depth:
        raise ConfigError(f"encoder_layers {num_layers}: the teacher has {depth} layers")
    config = copy.deepcopy(base.config)
    config.num_hidden_layers = num_layers
    config.layerdrop = 0.0
    config.mask_time_prob = config.mask_feature_prob = 0.0
    config.feat_proj_dropout = 0.0  # the frozen front end gives the teacher's features
    model = family_class(model_family(config), "model")(config)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    kept = re.compile(r"encoder\.layers\.(\d+)\.")
    extra = [k for k in unexpected if k != "masked_spec_embed"
             and not ((m := kept.match(k)) and int(m.group(1)) >= num_layers)]
    if missing or extra:
        raise ConfigError(f"cannot cut the teacher's encoder: missing {missing[:3]}, "
                          f"unexpected {extra[:3]}")
    return model.to(next(base.parameters()).device).train(teacher.training)


def build_layer_student(teacher, architecture="gendistiller", target_layers=None,
                        encoder_layers=2, time_mixer="attention", mixer_options=None,
                        generator=None):
    """A layer student of ``teacher`` (a transformers model or a folder holding one).

    Arguments
    ---------
    teacher : transformers.PreTrainedModel or str
        wav2vec2 / HuBERT / WavLM teacher (any head; its encoder is used).
    architecture : str
        ``"gendistiller"`` (layers generated one after another) or ``"distilhubert"``
        (parallel prediction heads).
    target_layers : list of int, optional
        Teacher layers to yield (1..L; default :func:`default_target_layers`).
    encoder_layers : int
        Teacher layers copied into the student's encoder (DistilHuBERT: 2).
    time_mixer : str
        ``"attention"`` keeps softmax attention in the encoder and the generator's
        two-dimensional attention; a mixer name (``"bimamba2"``, ...) makes both linear
        in time (the encoder's mixers start from the attention they replace).
    mixer_options : dict, optional
        Options of that mixer.
    generator : dict, optional
        Generator options: ``depth`` (2), ``ffn_size`` (the teacher's), ``num_heads``
        (the teacher's), ``dropout`` (0.1).

    Returns
    -------
    LayerStudent
        In training mode, CNN and feature projection frozen.
    """
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"architecture '{architecture}' is not one of {list(ARCHITECTURES)}")
    if isinstance(teacher, (str, Path)):
        teacher = load_model(teacher)
    if isinstance(teacher, (Student, LayerStudent)):
        raise ConfigError("the teacher must be a transformers model, not a student")
    config = base_model(teacher).config
    layers = check_target_layers(target_layers, config.num_hidden_layers)
    if architecture == "gendistiller" and len(layers) < 2:
        raise ConfigError(f"target_layers {layers}: gendistiller generates each layer from "
                          "the ones before it; give two or more (or use distilhubert)")
    if time_mixer == "attention" and mixer_options:
        raise ConfigError(f"mixer options {sorted(mixer_options)} given for attention, "
                          "which takes none; name the mixer they belong to")
    cut = truncated_encoder(teacher, encoder_layers)
    keep = list(range(encoder_layers)) if time_mixer == "attention" else []
    encoder = convert(cut, mixer="attention" if time_mixer == "attention" else time_mixer,
                      init="attention", keep_attention=keep,
                      **({} if time_mixer == "attention" else dict(mixer_options or {})))
    width = config.hidden_size
    if architecture == "distilhubert":
        head = ParallelHeads(len(layers), width, width)
    else:
        opts = {"depth": 2, "ffn_size": config.intermediate_size,
                "num_heads": config.num_attention_heads, "dropout": 0.1,
                **dict(generator or {})}
        unknown = set(opts) - {"depth", "ffn_size", "num_heads", "dropout"}
        if unknown:
            raise ConfigError(f"generator options {sorted(unknown)} unknown; use depth, "
                              "ffn_size, num_heads, dropout")
        head = LayerGenerator(len(layers), width, width, time_mixer=time_mixer,
                              mixer_options=mixer_options, **opts)
    info = {"architecture": architecture, "target_layers": layers,
            "teacher_layers": config.num_hidden_layers, "time_mixer": time_mixer,
            "source": str(getattr(teacher, "name_or_path", "") or "")}
    return LayerStudent(encoder, head.to(next(cut.parameters()).device), info).train()


class LayerStudent(nn.Module):
    """A small encoder and a head that yields the teacher's target layers.

    Called like a teacher (waveforms, or CNN features once
    :func:`cald_speech.features.enable_feature_input` is on); ``base_model`` is its
    encoder's transformers model, so the feature-cache and frame-mask helpers work.

    Arguments
    ---------
    encoder : cald_speech.student.Student
        The cut-down teacher (all attention kept, or mixers installed).
    head : LayerGenerator or ParallelHeads
        What produces the target layers from the encoder output.
    info : dict
        ``architecture``, ``target_layers``, ``teacher_layers``, ``time_mixer``,
        ``source``.
    """

    def __init__(self, encoder, head, info):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.info = dict(info)
        freeze_feature_encoder(encoder)
        for p in base_model(encoder).feature_projection.parameters():
            p.requires_grad_(False)

    @property
    def base_model(self):
        """The encoder's transformers model (CNN, projection, masks)."""
        return base_model(self.encoder.model)

    @property
    def config(self):
        """The encoder's transformers config."""
        return self.encoder.config

    @property
    def target_layers(self):
        """The teacher layers (1..L) this student yields, in order."""
        return list(self.info["target_layers"])

    def is_linear_time(self):
        """Whether the cost grows linearly with the audio's length."""
        return self.encoder.is_linear_time() and self.head.linear_time

    def forward(self, input_values, attention_mask=None, targets=None):
        """The generated (or predicted) target layers.

        Arguments
        ---------
        input_values : torch.Tensor
            (B, S) waveforms (or (B, C, T) CNN features).
        attention_mask : torch.Tensor, optional
            (B, S) 1 on real samples.
        targets : list of torch.Tensor, optional
            The teacher's target layers, for teacher forcing; ``None`` generates
            autoregressively (inference).

        Returns
        -------
        LayerOutput
        """
        encoded = self.encoder(input_values, attention_mask=attention_mask).last_hidden_state
        mask = _frame_mask(self.base_model, encoded, attention_mask)
        return LayerOutput(self.head(encoded, mask, targets), mask, encoded)

    def save_pretrained(self, directory):
        """Writes ``encoder/``, ``gendistiller.json`` and ``head.safetensors``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory / "encoder")
        info = {"format_version": FORMAT_VERSION, **self.info,
                "head": {"class": type(self.head).__name__, "options": head_options(self.head)}}
        (directory / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(state, str(directory / HEAD_WEIGHTS), metadata={"format": "pt"})
        respect_umask(directory)

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        """Loads a folder written by :meth:`save_pretrained` (in eval mode)."""
        directory = Path(directory)
        path = directory / INFO_NAME
        try:
            info = json.loads(path.read_text())
            head_cls = _HEADS[info["head"]["class"]]
            options = dict(info["head"]["options"])
            version = info.get("format_version", FORMAT_VERSION)
        except FileNotFoundError:
            raise DataError(path, "not found: the folder is not a layer student",
                            "give a folder written by the distill recipe") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(path, f"does not describe a layer student ({exc!r})",
                            "copy the gendistiller.json saved with the model") from None
        if version > FORMAT_VERSION:
            raise ConfigError(f"{path}: format {version} is newer than this cald-speech "
                              f"reads ({FORMAT_VERSION}); upgrade cald-speech")
        encoder = Student.from_pretrained(directory / "encoder", device=device)
        try:
            head = head_cls(**options)
        except (TypeError, ValueError) as exc:
            raise DataError(path, f"head options do not build a {head_cls.__name__} ({exc})",
                            "copy the gendistiller.json saved with the model") from None
        weights = directory / HEAD_WEIGHTS
        if not weights.is_file():
            raise DataError(weights, "not found", "copy the complete model folder")
        load_weights(head, weights, device)
        info = {k: v for k, v in info.items() if k not in ("head", "format_version")}
        return cls(encoder, head, info).eval()


def head_options(head):
    """The keyword arguments that rebuild ``head``."""
    if isinstance(head, ParallelHeads):
        out, inp = head.proj.weight.shape
        return {"num_steps": head.num_steps, "hidden_size": inp,
                "target_size": out // head.num_steps}
    block = head.blocks[0]
    mixer_options = None
    if head.time_mixer != "attention":
        cfg = block.mixer.mixer_config()
        mixer_options = {k: v for k, v in cfg.items()
                         if k not in ("name", "hidden_size", "num_heads")}
    return {"num_steps": head.num_steps, "hidden_size": head.in_proj.out_features,
            "target_size": head.in_proj.in_features,
            "num_heads": getattr(block.mixer, "num_heads", None),
            "depth": len(head.blocks), "ffn_size": block.ffn[0].out_features,
            "time_mixer": head.time_mixer, "mixer_options": mixer_options,
            "dropout": block.drop.p}


def is_layer_student(directory):
    """Whether ``directory`` holds a saved :class:`LayerStudent`."""
    return (Path(directory) / INFO_NAME).is_file()


def load_upstream(directory, device="cpu"):
    """A layer student folder as :class:`LayerStudent`; any other model folder as its model."""
    if is_layer_student(directory):
        return LayerStudent.from_pretrained(directory, device=device)
    return load_model(directory, device=device)


def upstream_layers(model, input_values, attention_mask=None, layers=None):
    """Layers of an upstream model: a layer student's own, or a teacher's hidden states.

    Arguments
    ---------
    model : LayerStudent or transformers model or Student
        The upstream.
    input_values, attention_mask : torch.Tensor
        As the model takes them.
    layers : list of int, optional
        For a teacher: which hidden states (0..L; default every one); a layer student
        always yields its own target layers.

    Returns
    -------
    hidden : list of torch.Tensor
        (B, T, C) each.
    frame_mask : torch.Tensor
        (B, T) bool.
    """
    if isinstance(model, LayerStudent):
        out = model(input_values, attention_mask=attention_mask)
        return out.layers, out.frame_mask
    base = base_model(model)
    out = base(input_values, attention_mask=attention_mask, output_hidden_states=True)
    states = out.hidden_states
    layers = list(range(len(states))) if layers is None else list(layers)
    bad = [i for i in layers if not 0 <= i < len(states)]
    if bad:
        raise ConfigError(f"layers {bad} out of range: the model has {len(states) - 1} layers")
    return [states[i] for i in layers], _frame_mask(base, states[0], attention_mask)


def _frame_mask(base, hidden, attention_mask):
    """(B, T) bool mask of the valid frames of ``hidden`` (B, T, C); all True unpadded."""
    if attention_mask is None:
        return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    return base._get_feature_vector_attention_mask(hidden.shape[1], attention_mask).bool()


__all__ = ["ARCHITECTURES", "LayerOutput", "LayerStudent", "build_layer_student",
           "check_target_layers", "default_target_layers", "is_layer_student",
           "load_upstream", "truncated_encoder", "upstream_layers"]
