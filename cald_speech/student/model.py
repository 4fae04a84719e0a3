"""Student models: HF speech encoders whose self-attention is replaced by linear mixers.

A student is the teacher's own transformers model (``Wav2Vec2ForCTC``,
``HubertModel``, ``WavLMForSequenceClassification``, ...) in which the
``attention`` module of some encoder layers is a :class:`MixerAttention`: a thin
adapter that accepts the call transformers makes to its attention modules and runs
a :class:`~cald_speech.mixers.Mixer` instead. Everything else — CNN feature
encoder, feature projection, positional convolution, LayerNorms, feed-forward
blocks, heads — is the unchanged transformers code, so the student is called like
the teacher (``input_values``, ``attention_mask``, ``output_hidden_states``) and
returns the same output object, with ``hidden_states`` indexed like the teacher's.

:class:`Student` wraps that model with the conversion record and gives it
``save_pretrained`` / ``from_pretrained``; :func:`~cald_speech.student.io.load_model`
loads either a student folder or a plain transformers folder (a teacher). Students are
built by :func:`~cald_speech.student.conversion.convert`.

How the padding mask reaches the mixers
---------------------------------------
transformers turns the feature-level ``(B, T)`` mask into whatever the configured
attention implementation wants and hands it to every layer's ``attention`` module:
``None`` (no padding), a ``(B, 1, T, T)`` boolean (``sdpa``) or additive float
(``eager``) mask, or the ``(B, T)`` mask itself (WavLM, flash attention).
:func:`frame_padding_mask` recovers the ``(B, T)`` frame mask from any of these, and
:class:`MixerAttention` passes it to its mixer. A student with no softmax layer left
switches its config to the attention implementation ``"cald_frames"`` (registered
here with transformers' ``AttentionInterface`` and ``AttentionMaskInterface``), whose
mask is the ``(B, T)`` frame mask itself, so that no ``T x T`` mask is ever built and
memory stays linear in the input length. Students that keep some softmax layers keep
the teacher's implementation, so those layers compute exactly what the teacher's do.
Because the mask travels as an argument, it is also present when gradient
checkpointing recomputes a layer.

Example
-------
>>> import torch
>>> from cald_speech.student import convert
>>> from cald_speech.testing import tiny_teacher
>>> teacher = tiny_teacher()
>>> student = convert(teacher, mixer="attention", init="attention")
>>> out = student(torch.randn(2, 800), output_hidden_states=True)
>>> len(out.hidden_states) == teacher.config.num_hidden_layers + 1
True
>>> student.layer_kinds()
['mixer:attention', 'mixer:attention']
"""

import json
from pathlib import Path

import torch
import transformers
from torch import nn

try:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface
except ImportError as exc:  # pragma: no cover - depends on the installed release
    raise ImportError(
        f"cald-speech needs transformers 5.24 (found {transformers.__version__}): "
        f"{exc}; fix: pip install 'transformers>=5.24,<5.25'"
    ) from exc

from cald_speech.errors import ConfigError, DataError
from cald_speech.families import FAMILIES, SUPPORTED_CLASSES
from cald_speech.features import set_waveform_settings, waveform_settings
from cald_speech.mixers import Mixer, build_saved_mixer
from cald_speech.preprocessor import WaveformSettings
from cald_speech.student.files import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    copy_extra_files,
    load_weights,
    read_config,
    respect_umask,
    weights_file,
)

#: Attention implementation of students without softmax layers: the mask is (B, T).
FRAME_MASK_IMPLEMENTATION = "cald_frames"

CALD_FORMAT_VERSION = 1


def frame_padding_mask(attention_mask):
    """Recovers the ``(B, T)`` frame mask from the mask transformers gives attention.

    Arguments
    ---------
    attention_mask : torch.Tensor or None
        ``None``; a ``(B, T)`` mask (non-zero on valid frames); a ``(B, 1, T, T)``
        boolean mask (``True`` = may attend); or a ``(B, 1, T, T)`` additive float
        mask (``0`` = may attend, very negative = masked).

    Returns
    -------
    torch.Tensor or None
        ``(B, T)`` bool, ``True`` on valid frames, or ``None`` when there is no padding.

    Example
    -------
    >>> import torch
    >>> valid = torch.tensor([[1, 1, 1], [1, 1, 0]])
    >>> frame_padding_mask(valid).tolist()
    [[True, True, True], [True, True, False]]
    >>> additive = torch.zeros(2, 1, 3, 3)
    >>> additive[1, :, :, 2] = torch.finfo(torch.float32).min
    >>> frame_padding_mask(additive).tolist()
    [[True, True, True], [True, True, False]]
    >>> frame_padding_mask(additive == 0).tolist()
    [[True, True, True], [True, True, False]]
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise ConfigError(
            f"cannot read a frame padding mask from a {type(attention_mask).__name__}; "
            "set the model's attention implementation to 'sdpa' or 'eager' "
            "(model.set_attn_implementation('sdpa'))"
        )
    if attention_mask.ndim == 4:
        # Bidirectional padding masks repeat the key mask on every query row; row 0
        # is a valid query whenever the utterance has at least one frame.
        row = attention_mask[:, 0, 0, :]
        if row.dtype == torch.bool:
            return row
        return row > torch.finfo(row.dtype).min / 2
    if attention_mask.ndim == 2:
        return attention_mask != 0
    raise ConfigError(
        f"unexpected attention mask of shape {tuple(attention_mask.shape)}; "
        "expected (batch, frames) or (batch, 1, frames, frames)"
    )


def _frame_mask_interface(attention_mask=None, **kwargs):
    """Mask function of ``cald_frames``: the (B, T) frame mask, unexpanded."""
    return attention_mask


def _frame_mask_attention(module, query, key, value, attention_mask, **kwargs):
    """Softmax attention under ``cald_frames``: expands the (B, T) mask to (B, 1, 1, T)."""
    if attention_mask is not None and attention_mask.ndim == 2:
        attention_mask = attention_mask[:, None, None, :].to(torch.bool)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionMaskInterface.register(FRAME_MASK_IMPLEMENTATION, _frame_mask_interface)
AttentionInterface.register(FRAME_MASK_IMPLEMENTATION, _frame_mask_attention)


class MixerAttention(nn.Module):
    """Runs a mixer in place of an encoder layer's self-attention.

    Accepts the call transformers makes to ``layer.attention`` (hidden states, the
    layer's attention mask in any of its forms, and keyword arguments it ignores)
    and returns what the layer unpacks: ``(output, None)``, or for WavLM
    ``(output, None, position_bias)`` with the incoming relative position bias
    passed on unchanged for later softmax layers. The mixer does not use WavLM's
    gated relative position bias.

    Arguments
    ---------
    mixer : cald_speech.mixers.Mixer
        The token mixer.
    passes_position_bias : bool
        True in WavLM layers, whose attention returns a position bias too.

    Example
    -------
    >>> import torch
    >>> from cald_speech.mixers import build_mixer
    >>> wrapper = MixerAttention(build_mixer("attention", hidden_size=8, num_heads=2))
    >>> out, weights = wrapper(torch.randn(2, 5, 8), attention_mask=torch.ones(2, 5))
    >>> out.shape, weights
    (torch.Size([2, 5, 8]), None)
    """

    def __init__(self, mixer, passes_position_bias=False):
        super().__init__()
        if not isinstance(mixer, Mixer):
            raise TypeError(f"expected a Mixer, got {type(mixer).__name__}")
        self.mixer = mixer
        self.passes_position_bias = passes_position_bias

    def forward(self, hidden_states, attention_mask=None, position_bias=None, **kwargs):
        """Mixes ``hidden_states`` (B, T, C) under the frame mask read from ``attention_mask``."""
        output = self.mixer(hidden_states, frame_padding_mask(attention_mask))
        if self.passes_position_bias:
            return output, None, position_bias
        return output, None


def model_family(model_or_config):
    """The family (``"wav2vec2"``, ``"hubert"``, ``"wavlm"``) of a model or config.

    Raises
    ------
    ConfigError
        If it is none of the supported architectures.
    """
    config = getattr(model_or_config, "config", model_or_config)
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise ConfigError(_unsupported_message(type(model_or_config).__name__, family))
    return family


def supported_class(name):
    """The transformers class called ``name`` if students can be made from it.

    Example
    -------
    >>> supported_class("HubertForCTC").__name__
    'HubertForCTC'
    """
    if name not in SUPPORTED_CLASSES:
        raise ConfigError(_unsupported_message(name))
    return getattr(transformers, name)


def _unsupported_message(name, model_type=None):
    what = f"'{name}'" + (f" (model_type '{model_type}')" if model_type else "")
    return (
        f"unsupported architecture {what}; supported: {', '.join(SUPPORTED_CLASSES)}"
    )


def encoder_layers(model):
    """The ``nn.ModuleList`` of encoder layers of a supported transformers model."""
    return model.base_model.encoder.layers


def install_mixers(model, mixers):
    """Replaces the self-attention of encoder layers by mixers, in place.

    Arguments
    ---------
    model : transformers.PreTrainedModel
        A supported model (see :data:`SUPPORTED_CLASSES`).
    mixers : list of Mixer or None
        One entry per encoder layer; ``None`` keeps that layer's attention.

    Notes
    -----
    In WavLM, layer 0's attention owns the relative position embedding that every
    later softmax layer reuses. When layer 0 becomes a mixer and a later layer keeps
    its attention, the embedding moves to the first kept layer, which then computes
    the (ungated) bias exactly as layer 0 would have.
    """
    family = model_family(model)
    layers = encoder_layers(model)
    if len(mixers) != len(layers):
        raise ConfigError(f"got {len(mixers)} mixer entries for {len(layers)} encoder layers")
    kept = [i for i, m in enumerate(mixers) if m is None]
    if family == "wavlm" and mixers[0] is not None and kept:
        layers[kept[0]].attention.rel_attn_embed = layers[0].attention.rel_attn_embed
    for layer, mixer in zip(layers, mixers):
        if mixer is not None:
            layer.attention = MixerAttention(mixer, passes_position_bias=family == "wavlm")
    if not kept:
        model.config._attn_implementation = FRAME_MASK_IMPLEMENTATION


class Student(nn.Module):
    """A converted speech encoder, called like its teacher, that saves and loads itself.

    Attribute lookups the student does not answer itself (``config``,
    ``freeze_feature_encoder``, ``_get_feat_extract_output_lengths``, ...) go to the
    wrapped transformers model, so a student can stand where the teacher stood.

    Arguments
    ---------
    model : transformers.PreTrainedModel
        The transformers model with mixers installed (see :func:`install_mixers`).
    cald : dict
        The conversion record saved under ``"cald"`` in ``config.json``: ``source_class``,
        ``init``, ``keep_attention``, ``mixers`` (one mixer config or ``None`` per
        layer), ``attn_implementation`` (that of the kept softmax layers).
    source_path : str, optional
        Folder whose tokenizer / label-map files are copied by :meth:`save_pretrained`.

    Example
    -------
    >>> import tempfile, torch
    >>> from cald_speech.student import convert
    >>> from cald_speech.testing import tiny_teacher
    >>> student = convert(tiny_teacher(), mixer="attention", keep_attention=[1]).eval()
    >>> wav = torch.randn(1, 800)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     student.save_pretrained(folder)
    ...     again = Student.from_pretrained(folder)
    >>> torch.equal(student(wav).last_hidden_state, again(wav).last_hidden_state)
    True
    """

    def __init__(self, model, cald, source_path=None):
        super().__init__()
        self.model = model
        # kept as it reads back from config.json (tuples become lists)
        self.cald = json.loads(json.dumps(cald))
        self.source_path = source_path

    def forward(self, input_values, attention_mask=None, **kwargs):
        """Runs the model as transformers would run the teacher.

        Arguments
        ---------
        input_values : torch.Tensor
            (B, S) waveform batch.
        attention_mask : torch.Tensor, optional
            (B, S) sample mask, 1 on real samples, 0 on padding.
        **kwargs
            Passed on: ``output_hidden_states``, ``labels``, ``return_dict``, ...

        Returns
        -------
        transformers.utils.ModelOutput
            The teacher class's output (``last_hidden_state`` or ``logits``, and
            ``hidden_states`` when asked for).
        """
        return self.model(input_values, attention_mask=attention_mask, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None or name.startswith("__"):
                raise
            return getattr(model, name)

    @property
    def config(self):
        """The transformers config of the wrapped model."""
        return self.model.config

    def layer_kinds(self):
        """Per encoder layer: ``"attention"`` (kept) or ``"mixer:<name>"``."""
        kinds = []
        for layer in encoder_layers(self.model):
            if isinstance(layer.attention, MixerAttention):
                kinds.append(f"mixer:{layer.attention.mixer.name}")
            else:
                kinds.append("attention")
        return kinds

    def mixers(self):
        """Per encoder layer: its mixer, or ``None`` where softmax attention was kept."""
        return [layer.attention.mixer if isinstance(layer.attention, MixerAttention) else None
                for layer in encoder_layers(self.model)]

    def is_linear_time(self):
        """True when every layer is a mixer that declares itself linear-time."""
        return all(m is not None and m.linear_time for m in self.mixers())

    def max_frames(self):
        """The longest input (encoder frames) every layer accepts; ``None``: unbounded."""
        limits = [m.max_frames for m in self.mixers() if m is not None and m.max_frames]
        return min(limits) if limits else None

    def save_pretrained(self, directory, extra_files_from=None):
        """Writes ``config.json`` (source config + ``"cald"`` record), weights, extra files.

        Arguments
        ---------
        directory : str or os.PathLike
            Output folder (created; existing files of the same names are replaced).
        extra_files_from : str or os.PathLike, optional
            Folder to copy tokenizer / processor / label-map files from (see
            :data:`~cald_speech.student.files.EXTRA_FILES`); defaults to the folder the
            teacher or student was loaded from, when that is a local folder.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.model.config.to_dict()
        config["architectures"] = [self.cald["source_class"]]
        config["cald"] = self.cald
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        source = extra_files_from if extra_files_from is not None else self.source_path
        if source:
            copy_extra_files(source, directory)
        waveform_settings(self.model).save(directory)  # the settings in force win
        respect_umask(directory)

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        """Loads a student saved by :meth:`save_pretrained`; needs neither teacher nor network.

        Arguments
        ---------
        directory : str or os.PathLike
            A student folder.
        device : str or torch.device
            Where to put the weights.

        Returns
        -------
        Student
            In eval mode, like transformers' ``from_pretrained``.
        """
        directory = Path(directory)
        config_dict = read_config(directory)
        if "cald" not in config_dict:
            raise ConfigError(
                f"{directory} holds a plain transformers model, not a student; load it with "
                "cald_speech.student.load_model() or convert it with cald_speech.student.convert()"
            )
        weights = weights_file(directory, (WEIGHTS_NAME,))
        cald = config_dict.pop("cald")
        path = directory / CONFIG_NAME
        missing = [k for k in ("source_class", "mixers")
                   if not isinstance(cald, dict) or k not in cald]
        if missing:
            raise DataError(path, f"the 'cald' section lacks {missing}",
                            "copy the config.json saved with the student, or convert again")
        version = cald.get("format_version", CALD_FORMAT_VERSION)
        if version > CALD_FORMAT_VERSION:
            raise ConfigError(
                f"{path}: student format {version} is newer than this "
                f"cald-speech reads ({CALD_FORMAT_VERSION}); upgrade cald-speech"
            )
        model_cls = supported_class(cald["source_class"])
        try:
            config = transformers.AutoConfig.for_model(**config_dict)
            config._attn_implementation = cald.get("attn_implementation")
            model = model_cls(config)
            mixers = [None if c is None else build_saved_mixer(c) for c in cald["mixers"]]
            install_mixers(model, mixers)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(path, f"does not describe a student ({type(exc).__name__}: {exc})",
                            "copy the config.json saved with the student, or convert "
                            "again") from exc
        load_weights(model, weights, device)
        set_waveform_settings(model, WaveformSettings.from_folder(directory))
        return cls(model, cald, source_path=str(directory)).eval()
