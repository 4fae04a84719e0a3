"""The files that let SpeechBrain's own interfaces load a packaged model folder.

:func:`write_speechbrain_files` (called by :func:`cald_speech.student.package_model`)
writes into a CTC model folder (a student or a transformers ``...ForCTC`` model, with its
tokenizer) a ``hyperparams.yaml`` for
:meth:`speechbrain.inference.ASR.EncoderASR.from_hparams`, and into an intent model
folder (the SLURP recipe's) a ``hyperparams.yaml`` plus a ``custom.py`` for
:func:`speechbrain.inference.interfaces.foreign_class`. Other folders (encoders without a
head) get neither.

The YAML names the runtime classes of :mod:`cald_speech.inference.speechbrain_interface`
by their dotted names, as text (this package imports no inference code). Its
``pretrainer`` (a :class:`~cald_speech.inference.speechbrain_interface.FolderPretrainer`)
lists the folder's own files by their names relative to the folder, so a copied,
moved or uploaded folder loads the same.

Example
-------
>>> import os, tempfile
>>> from cald_speech.student import convert
>>> from cald_speech.testing import tiny_teacher
>>> folder = tempfile.mkdtemp()
>>> convert(tiny_teacher(head="ctc", vocab_size=29)).save_pretrained(folder)
>>> _ = open(os.path.join(folder, "tokenizer.json"), "w").write('{"kind": "char"}')
>>> write_speechbrain_files(folder)
['hyperparams.yaml']
>>> text = open(os.path.join(folder, "hyperparams.yaml")).read()
>>> print(text[text.index("encoder:"):text.index("    files:")].rstrip())
encoder: !new:cald_speech.inference.speechbrain_interface.CTCEncoder
    mode: auto  # as cald-transcribe: one-pass, windowed or plain
tokenizer: !new:cald_speech.inference.speechbrain_interface.CTCTokenizer
decoding_function: !name:speechbrain.decoders.ctc.ctc_greedy_decode
    blank_id: 0
<BLANKLINE>
modules:
    encoder: !ref <encoder>
<BLANKLINE>
pretrainer: !new:cald_speech.inference.speechbrain_interface.FolderPretrainer
    loadables:
        encoder: !ref <encoder>
        tokenizer: !ref <tokenizer>
    paths:
        encoder: "model.safetensors"
        tokenizer: "tokenizer.json"
"""

import json
from fnmatch import fnmatch
from pathlib import Path

from cald_speech.student.files import (
    CONFIG_NAME,
    EXTRA_FILES,
    EXTRA_PATTERNS,
    HF_WEIGHTS,
    weights_file,
)

HPARAMS_FILE = "hyperparams.yaml"
PREPROCESSOR_FILE = "preprocessor_config.json"
CUSTOM_FILE = "custom.py"
#: The head config and weights of an intent model folder (``HEAD_CONFIG`` and
#: ``HEAD_WEIGHTS`` of ``cald_speech.tasks.intent.model``, which this package may not import).
INTENT_HEAD = "intent_head.json"
INTENT_WEIGHTS = "intent_head.safetensors"
#: The tokenizer files a CTC folder's ``tokenizer`` loadable may point at, preferred first.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
#: Further files of a model folder collected for the loaders, besides EXTRA_FILES.
MODEL_PATTERNS = ("*.json", "*.safetensors")
#: Where the runtime classes live (named as text: student imports no inference code).
RUNTIME = "cald_speech.inference.speechbrain_interface"
MARKER = "# SpeechBrain interface of a cald-speech model folder"

_CUSTOM_PY = f'''{MARKER} (written by cald_speech.student.package_model).
"""The SpeechBrain interface of this intent model folder.

Loaded by speechbrain.inference.interfaces.foreign_class(source=<this folder>,
pymodule_file="custom.py", classname="CaldIntentClassifier", savedir=...); the class
lives in the cald-speech package, which must be installed.
"""

from {RUNTIME} import CaldIntentClassifier

__all__ = ["CaldIntentClassifier"]
'''


def folder_kind(folder):
    """``"ctc"``, ``"intent"`` or ``None`` (no SpeechBrain interface) for a model folder.

    A CTC model is a student whose ``cald.source_class``, or a transformers model whose
    first architecture, ends in ``ForCTC`` (as ``cald_speech.inference.model_task``).

    Example
    -------
    >>> import tempfile
    >>> folder_kind(tempfile.mkdtemp()) is None
    True
    """
    folder = Path(folder)
    if (folder / INTENT_HEAD).is_file():
        return "intent"
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    cald = config.get("cald") if isinstance(config.get("cald"), dict) else {}
    arch = cald.get("source_class") or (config.get("architectures") or [""])[0]
    return "ctc" if str(arch).endswith("ForCTC") else None


def _is_model_file(name):
    return (name in EXTRA_FILES or name in HF_WEIGHTS
            or any(fnmatch(name, p) for p in (*EXTRA_PATTERNS, *MODEL_PATTERNS)))


def model_files(folder):
    """The files of a model folder its loaders read, relative to it (POSIX, sorted).

    Configs, weights, tokenizer, processor and label files at the top, and those of
    nested model folders (a sub-folder with a ``config.json``, e.g. an intent model's
    ``encoder/``); ``hyperparams.yaml`` and ``custom.py`` are not among them.

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp(); os.mkdir(os.path.join(d, "encoder")); os.mkdir(os.path.join(d, "x"))
    >>> for name in ("config.json", "encoder/config.json", "x/config.txt", "log.txt"):
    ...     _ = open(os.path.join(d, name), "w").write("{}")
    >>> model_files(d)
    ['config.json', 'encoder/config.json']
    """
    folder = Path(folder)
    found = [p.name for p in folder.iterdir() if p.is_file() and _is_model_file(p.name)]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if (sub / CONFIG_NAME).is_file():
            found += [f"{sub.name}/{rel}" for rel in model_files(sub)]
    return sorted(found)


def _yaml_list(names, indent):
    pad = " " * indent
    return "".join(f"{pad}- {json.dumps(name)}\n" for name in names)


def _pretrainer(loadables, files):
    """The ``pretrainer`` block: name -> (object key, file of the folder)."""
    lines = [f"pretrainer: !new:{RUNTIME}.FolderPretrainer", "    loadables:"]
    lines += [f"        {name}: !ref <{key}>" for name, (key, _) in loadables.items()]
    lines.append("    paths:")
    lines += [f"        {name}: {json.dumps(rel)}" for name, (_, rel) in loadables.items()]
    taken = {rel for _, rel in loadables.values()}
    rest = [f for f in files if f not in taken]
    text = "\n".join(lines) + "\n"
    if rest:
        text += "    files:\n" + _yaml_list(rest, 8)
    return text


def sampling_rate(folder):
    """The rate the folder's model takes (``preprocessor_config.json``; 16000 without it).

    Example
    -------
    >>> import tempfile
    >>> sampling_rate(tempfile.mkdtemp())
    16000
    """
    try:
        rate = json.loads((Path(folder) / PREPROCESSOR_FILE).read_text()).get("sampling_rate")
    except (OSError, ValueError, AttributeError):
        rate = None
    return int(rate) if isinstance(rate, int) and rate > 0 else 16000


def _header(folder, load_lines):
    return (f"{MARKER} (written by cald_speech.student.package_model).\n"
            "# Needs the cald-speech package. Every path is relative to this folder, which\n"
            "# may be copied, moved or uploaded as a whole. Load it with:\n"
            + "".join(f"#   {line}\n" for line in load_lines) + "\n"
            f"sample_rate: {sampling_rate(folder)}\n"
            f"audio_normalizer: !new:{RUNTIME}.AudioNormalizer\n"
            "    sample_rate: !ref <sample_rate>\n\n")


def ctc_hparams(folder, files):
    """The ``hyperparams.yaml`` text of a CTC folder (``None`` without a tokenizer)."""
    folder = Path(folder)
    tokenizer = next((name for name in TOKENIZER_FILES if (folder / name).is_file()), None)
    if tokenizer is None:
        return None
    weights = weights_file(folder).name
    return (_header(folder, [
        "from speechbrain.inference.ASR import EncoderASR",
        'asr = EncoderASR.from_hparams(source="<this folder>", savedir="<a folder>")',
        'asr.transcribe_file("speech.wav")']) +
        f"encoder: !new:{RUNTIME}.CTCEncoder\n"
        "    mode: auto  # as cald-transcribe: one-pass, windowed or plain\n"
        f"tokenizer: !new:{RUNTIME}.CTCTokenizer\n"
        "decoding_function: !name:speechbrain.decoders.ctc.ctc_greedy_decode\n"
        "    blank_id: 0\n\n"
        "modules:\n"
        "    encoder: !ref <encoder>\n\n"
        + _pretrainer({"encoder": ("encoder", weights), "tokenizer": ("tokenizer", tokenizer)},
                      files))


def intent_hparams(folder, files):
    """The ``hyperparams.yaml`` text of an intent folder (names fixed by IntentModel)."""
    return (_header(folder, [
        "from speechbrain.inference.interfaces import foreign_class",
        'slu = foreign_class(source="<this folder>", pymodule_file="custom.py",',
        '                    classname="CaldIntentClassifier", savedir="<a folder>")',
        'slu.classify_file("speech.wav")["intent"]']) +
        f"classifier: !new:{RUNTIME}.IntentModule\n\n"
        "modules:\n"
        "    classifier: !ref <classifier>\n\n"
        + _pretrainer({"classifier": ("classifier", INTENT_WEIGHTS)}, files))


def _remove_ours(path):
    """Removes a file this module wrote earlier (it starts with :data:`MARKER`)."""
    try:
        if MARKER in path.read_text(errors="replace")[:200]:
            path.unlink()
    except OSError:
        pass


def write_speechbrain_files(folder):
    """Writes ``hyperparams.yaml`` (+ ``custom.py`` for intent models) into a model folder.

    Arguments
    ---------
    folder : str or os.PathLike
        A packaged model folder, complete (model, tokenizer, ``cald_info.json``).

    Returns
    -------
    list of str
        The names written: ``[]`` for a model without a CTC or intent head, or a CTC
        model without a tokenizer (files of an earlier packaging are then removed).
    """
    folder = Path(folder)
    kind = folder_kind(folder)
    files = model_files(folder)
    text = (ctc_hparams(folder, files) if kind == "ctc" else
            intent_hparams(folder, files) if kind == "intent" else None)
    written = []
    if text is None:
        _remove_ours(folder / HPARAMS_FILE)
    else:
        (folder / HPARAMS_FILE).write_text(text)
        written.append(HPARAMS_FILE)
    if kind == "intent":
        (folder / CUSTOM_FILE).write_text(_CUSTOM_PY)
        written.append(CUSTOM_FILE)
    else:
        _remove_ours(folder / CUSTOM_FILE)
    return sorted(written)
