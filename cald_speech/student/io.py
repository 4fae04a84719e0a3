"""Loading any model folder, and packaging a model for inference.

:func:`load_model` loads a student folder as a :class:`~cald_speech.student.model.Student`
and a plain transformers folder (a teacher) as its transformers model, refusing
incomplete folders (:func:`~cald_speech.student.files.load_strict`);
:func:`package_model` writes the self-contained folder that inference loads.
"""

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel

from cald_speech.errors import ConfigError
from cald_speech.families import SUPPORTED_CLASSES
from cald_speech.features import waveform_settings
from cald_speech.student.files import (
    CONFIG_NAME,
    load_strict,
    read_config,
    respect_umask,
    to_device,
)
from cald_speech.student.model import Student, supported_class
from cald_speech.student.speechbrain_files import write_speechbrain_files

#: Tokenizer files of either format (the project's, a hub CTC vocabulary's).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")


def package_model(model, folder, tokenizer=None, info=None):
    """Writes a self-contained model folder for inference.

    ``config.json`` + ``model.safetensors`` (student or transformer), what the model
    expects of its waveform (``preprocessor_config.json``), the tokenizer when given
    (the project's ``tokenizer.json``, or a hub vocabulary's ``vocab.json``,
    ``tokenizer_config.json`` and ``special_tokens_map.json``; the files of any other
    tokenizer are removed), and ``cald_info.json`` with what produced it.

    Example
    -------
    >>> import os, tempfile
    >>> from cald_speech.student import convert
    >>> from cald_speech.testing import tiny_teacher
    >>> folder = package_model(convert(tiny_teacher()), tempfile.mkdtemp(), info={"run": 1})
    >>> sorted(os.listdir(folder))
    ['cald_info.json', 'config.json', 'model.safetensors', 'preprocessor_config.json']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)
    if isinstance(model, PreTrainedModel):
        model.save_pretrained(folder, safe_serialization=True)
    else:  # a Student, or another model that writes its own folder
        model.save_pretrained(folder)
    waveform_settings(model).save(folder)
    if tokenizer is not None:
        for name in TOKENIZER_FILES:  # one tokenizer: none left from the source folder
            (folder / name).unlink(missing_ok=True)
        tokenizer.save(str(folder / "tokenizer.json"))
    meta = {"torch": torch.__version__, **(info or {})}
    (folder / "cald_info.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    write_speechbrain_files(folder)  # hyperparams.yaml for SpeechBrain's from_hparams
    respect_umask(folder)
    return str(folder)



def load_model(directory, device="cpu"):
    """Loads a student folder as a :class:`Student`, or a transformers folder as its model.

    Arguments
    ---------
    directory : str or os.PathLike
        A folder written by :meth:`Student.save_pretrained`, or by transformers'
        ``save_pretrained`` for one of :data:`SUPPORTED_CLASSES`.
    device : str or torch.device
        Where to put the weights.

    Returns
    -------
    Student or transformers.PreTrainedModel
        In eval mode.

    Example
    -------
    >>> import tempfile
    >>> from cald_speech.testing import tiny_teacher
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     tiny_teacher().save_pretrained(folder)
    ...     type(load_model(folder)).__name__
    'Wav2Vec2Model'
    """
    from cald_speech.hub import resolve_model_source  # a hub id: its locally cached snapshot

    directory = resolve_model_source(directory)
    if (Path(directory) / "gendistiller.json").is_file():
        raise ConfigError(f"{directory} holds a layer student (GenDistiller or DistilHuBERT); "
                          "load it with cald_speech.gendistiller.load_upstream")
    config = read_config(directory)
    if "cald" in config:
        return Student.from_pretrained(directory, device=device)
    architectures = config.get("architectures") or []
    if not architectures:
        raise ConfigError(
            f"{Path(directory) / CONFIG_NAME} names no architecture; "
            f"add \"architectures\": [one of {', '.join(SUPPORTED_CLASSES)}]"
        )
    model_cls = supported_class(architectures[0])
    model = load_strict(model_cls, directory)
    return to_device(model, device).eval()
