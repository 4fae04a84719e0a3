"""Model folders on disk: ``config.json``, weights files, extra files, strict loading.

A transformers model folder that is incomplete must never load: ``from_pretrained``
initialises missing tensors at random and only prints a report, so a truncated copy or
a config from another model gives a confident wrong transcript. Everything here raises
a :class:`~cald_speech.errors.DataError` naming the file and the fix instead. The
tokenizer, processor and label-map files that travel with a model are copied by
:func:`copy_extra_files`.

Example
-------
>>> import json, os, tempfile
>>> d = tempfile.mkdtemp()
>>> _ = open(os.path.join(d, "config.json"), "w").write("[1, 2]")
>>> read_config(d)
Traceback (most recent call last):
  ...
cald_speech.errors.DataError: ...config.json: holds a list, not a model configuration...
"""

import json
import logging
import os
import shutil
from fnmatch import fnmatch
from pathlib import Path

from cald_speech.errors import ConfigError, DataError
from cald_speech.features import set_waveform_settings
from cald_speech.preprocessor import WaveformSettings

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Weights files transformers reads, in the order it prefers them.
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "pytorch_model.bin.index.json")

#: Files besides config and weights that travel with a model folder when present.
EXTRA_FILES = (
    "vocab.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "preprocessor_config.json",
    "processor_config.json",
    "alphabet.json",
    "label_map.json",
    "labels.json",
    "label_encoder.txt",
    "tokenizer.ckpt",
)
#: Glob patterns of further files that travel with a model folder (sentencepiece models).
EXTRA_PATTERNS = ("*.model",)


def respect_umask(folder):
    """Gives the files of a saved model folder the mode ``open`` would (0666 less the umask).

    safetensors writes weights as 0600, which makes a model shared on a group folder
    unreadable to everyone but its owner.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)


def read_config(directory):
    """Reads ``config.json`` of a model folder, with clear errors for missing files.

    A folder that holds a model one level down (a recipe's run folder and its
    ``model/``) gets that folder named as the fix.

    Example
    -------
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> (run / "model").mkdir(); _ = (run / "model" / CONFIG_NAME).write_text("{}")
    >>> read_config(run)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    cald_speech.errors.DataError: ...: no config.json in the folder (fix: give the model ...)
    >>> read_config(run / "model")
    {}
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "no such model folder", "give the folder of a saved model")
    path = directory / CONFIG_NAME
    if not path.is_file():
        inside = sorted(p.parent for p in directory.glob(f"*/{CONFIG_NAME}"))
        fix = "give a folder written by save_pretrained"
        if inside:  # a recipe's run folder: the packaged model is in model/
            best = next((p for p in inside if p.name == "model"), inside[0])
            fix = f"give the model folder inside it: {best}"
        raise DataError(directory, f"no {CONFIG_NAME} in the folder", fix)
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})", "re-save the model") from exc
    if not isinstance(config, dict):
        raise DataError(path, f"holds a {type(config).__name__}, not a model configuration "
                        "(a JSON object of sizes and options)",
                        "copy the config.json that was saved with these weights")
    return config


def weights_file(directory, names=HF_WEIGHTS):
    """The first of ``names`` present in ``directory``; DataError when there is none."""
    for name in names:
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    raise DataError(
        directory,
        f"no weights file ({' or '.join(names)}) in the folder",
        "give a folder written by save_pretrained",
    )


def check_safetensors(path):
    """Opens a ``.safetensors`` file's header and reads every tensor: damage is a DataError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)[:]  # a truncated file fails here, not on first use
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(path, f"is damaged or truncated ({str(exc).splitlines()[0]})",
                        "copy the model folder again, or re-save the model") from exc


def load_strict(model_cls, directory, allow_new=(), **kwargs):
    """``model_cls.from_pretrained(directory)`` that refuses to invent weights.

    Arguments
    ---------
    model_cls : type
        A transformers model class.
    directory : str or os.PathLike
        A local model folder.
    allow_new : sequence of str
        ``fnmatch`` patterns of parameters that may be missing from (or have another
        shape than in) the folder and are then initialised, e.g. ``("lm_head.*",)`` for
        the new head of a fine-tuning run.
    **kwargs
        More ``from_pretrained`` options (``ignore_mismatched_sizes``, ``vocab_size``, ...).

    Returns
    -------
    transformers.PreTrainedModel
        With the folder's waveform settings (``preprocessor_config.json``) attached
        (:func:`cald_speech.features.waveform_settings`).

    Raises
    ------
    DataError
        Damaged or truncated weights, weights that do not fit the config, or tensors
        missing from the folder (all name the weights file).

    Example
    -------
    >>> import tempfile
    >>> from transformers import Wav2Vec2ForCTC
    >>> from cald_speech.testing import tiny_teacher
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     tiny_teacher().save_pretrained(folder)      # an encoder without a CTC head
    ...     model = load_strict(Wav2Vec2ForCTC, folder, allow_new=("lm_head.*",))
    ...     load_strict(Wav2Vec2ForCTC, folder)
    Traceback (most recent call last):
      ...
    cald_speech.errors.DataError: ...lacks 2 tensor(s) the model needs (lm_head.bias, ...
    """
    directory = Path(directory)
    weights = weights_file(directory)
    if weights.suffix == ".safetensors":
        check_safetensors(weights)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: what is wrong is raised below
    try:
        model, info = model_cls.from_pretrained(
            str(directory), local_files_only=True, output_loading_info=True, **kwargs
        )
    except (RuntimeError, ValueError, OSError, TypeError) as exc:
        text = str(exc)
        if "ignore_mismatched_sizes" in text:
            text = "its tensors have other shapes than the config asks for"
        first = next((line for line in text.splitlines() if line.strip()), repr(exc))
        raise DataError(weights, f"cannot be loaded as {model_cls.__name__} with "
                        f"{directory / CONFIG_NAME} ({first})",
                        "use the config.json saved with these weights") from exc
    finally:
        hf_logging.set_verbosity(verbosity)

    def invented(keys):
        return sorted(k for k in keys if not any(fnmatch(k, p) for p in allow_new))

    missing = invented(info.get("missing_keys", ()))
    mismatched = invented(k[0] if isinstance(k, (tuple, list)) else k
                          for k in info.get("mismatched_keys", ()))
    if missing:
        raise DataError(weights, f"lacks {len(missing)} tensor(s) the model needs "
                        f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); "
                        "they would be initialised at random",
                        "copy the complete model folder, or re-save the model")
    if mismatched:
        raise DataError(weights, f"has {len(mismatched)} tensor(s) of another shape than "
                        f"{directory / CONFIG_NAME} asks for ({', '.join(mismatched[:4])})",
                        "use the config.json saved with these weights")
    set_waveform_settings(model, WaveformSettings.from_folder(directory))
    return model


def load_weights(model, weights, device):
    """Loads ``weights`` (safetensors) into ``model``, which must match them key for key.

    Weights of one floating dtype set the model's (a bf16 student stays bf16); the model
    then moves to ``device`` (:func:`to_device`).
    """
    from safetensors.torch import load_file

    try:  # read on the CPU: a device problem must not look like a bad file
        state = load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(weights, f"cannot read the weights ({exc})", "re-save the model") from exc
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:  # keep the saved precision (e.g. a bf16 student stays bf16)
        model.to(dtypes.pop())
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(
            weights,
            f"weights do not match the config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}",
            "save the model again with Student.save_pretrained",
        )
    to_device(model, device)


def to_device(model, device):
    """Moves ``model`` to ``device``, with a clear error when that device is unusable.

    Example
    -------
    >>> from torch import nn
    >>> to_device(nn.Linear(2, 2), "cpu").weight.device.type
    'cpu'
    """
    try:
        return model.to(device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ConfigError(
            f"device '{device}' cannot be used here ({str(exc).splitlines()[0]}); "
            "fix: choose --device cpu, or a GPU that torch.cuda.is_available() sees"
        ) from exc


def copy_extra_files(source, destination):
    """Copies tokenizer, processor and label-map files from one model folder to another.

    Returns
    -------
    list of str
        Names of the copied files.
    """
    source, destination = Path(source), Path(destination)
    if not source.is_dir() or source.resolve() == destination.resolve():
        return []
    found = {p for name in EXTRA_FILES if (p := source / name).is_file()}
    found |= {p for pattern in EXTRA_PATTERNS for p in source.glob(pattern) if p.is_file()}
    for path in sorted(found):
        shutil.copy2(path, destination / path.name)
    return sorted(p.name for p in found)
