"""What the recipes share: hparams checks and model setup per guidance mode.

A recipe's ``train.py`` stays a few lines long; the logic lives here, once.

Modes (``mode`` in the hparams):

==============  ===========================================================  ============
mode            model trained                                                teacher
==============  ===========================================================  ============
``finetune``    the transformer at ``model_source`` (or built from            none
                ``model_config``): fine-tunes a teacher, may save waypoints
``unguided``    convert(``student_source``)                                  none
``target``      convert(``student_source``, default ``teacher_source``)      ``teacher_source``
``hybrid``      as target; layer loss off from ``switch_step``               ``teacher_source``
``trajectory``  convert(``pretrained_source``)                               ``pretrained_source``,
                                                                              co-trained
``waypoint``    convert(``pretrained_source``)                               ``waypoint_dir``/step-N
==============  ===========================================================  ============
"""

import difflib
import logging
import os

from cald_speech.convert import convert
from cald_speech.distill.guidance import MODES, Guidance, discover_waypoints
from cald_speech.errors import ConfigError, DataError
from cald_speech.families import family_class, family_config_class, family_of_class
from cald_speech.model_files import load_strict
from cald_speech.student import Student, load_model, read_config, supported_class

logger = logging.getLogger(__name__)

RECIPE_MODES = ("finetune", *MODES)


def check_hparams_keys(hparams, known, hparams_file):
    """Fails on top-level keys that look like typos of keys the recipe reads.

    A key that is not known but is close to a known one (``alpha_layr``) is an error
    with a suggestion; other unknown keys are taken as the user's own helper values.

    Example
    -------
    >>> check_hparams_keys({"alpha_layer": 1, "my_lr": 2}, {"alpha_layer"}, "x.yaml")
    >>> check_hparams_keys({"alpha_layr": 1}, {"alpha_layer"}, "x.yaml")
    Traceback (most recent call last):
      ...
    cald_speech.errors.ConfigError: x.yaml: unknown key 'alpha_layr' (did you mean 'alpha_layer'?)
    """
    for key in hparams:
        if key in known or key.startswith("_"):
            continue
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.85)
        if close:
            raise ConfigError(f"{hparams_file}: unknown key '{key}' (did you mean '{close[0]}'?)")


def _require(hp, key, mode):
    if hp.get(key) in (None, ""):
        raise ConfigError(f"mode '{mode}' needs '{key}' in the hparams")
    return hp[key]


def _check_folder(path, what):
    if not os.path.isdir(str(path)):
        raise DataError(
            path, f"{what} folder not found",
            "give a local model folder (save_pretrained output) or train it first",
        )
    return str(path)


def load_ctc_model(source, vocab_size, pad_token_id=0):
    """Loads a CTC model (student or transformer) whose head has ``vocab_size`` outputs.

    A transformer without a CTC head, or with one of another size, gets a new head
    (randomly initialised) — the usual start of a fine-tuning run.
    """
    source = _check_folder(source, "model")
    if has_ctc_head(source, vocab_size):
        model = load_model(source)
    else:
        arch = (read_config(source).get("architectures") or [""])[0]
        supported_class(arch)
        ctc_cls = family_class(family_of_class(arch), "ctc")
        logger.info("%s: new CTC head with %d outputs on %s", source, vocab_size, arch)
        model = load_strict(ctc_cls, source, allow_new=("lm_head.*",), vocab_size=vocab_size,
                            pad_token_id=pad_token_id, ignore_mismatched_sizes=True)
    head = getattr(model, "lm_head", None)
    if head is None or head.out_features != vocab_size:
        raise ConfigError(
            f"{source}: CTC head has {getattr(head, 'out_features', None)} outputs but the "
            f"tokenizer has {vocab_size} units; use the tokenizer the model was trained with"
        )
    return model.train()


def has_ctc_head(source, vocab_size):
    """Whether the model folder ``source`` holds a CTC head with ``vocab_size`` outputs."""
    cfg = read_config(source)
    arch = (cfg.get("architectures") or [""])[0]
    return "cald" in cfg or (arch.endswith("ForCTC") and cfg.get("vocab_size") == vocab_size)


def ctc_model_from_config(config, vocab_size, family="wav2vec2"):
    """A randomly initialised CTC transformer from a dict of config values."""
    cfg = family_config_class(family)(
        **{**dict(config), "vocab_size": vocab_size, "pad_token_id": 0}
    )
    return family_class(family, "ctc")(cfg)


def build_models(hp, load_task_model):
    """Builds (model to train, teacher or None, guidance or None, teacher_loader).

    Arguments
    ---------
    hp : dict
        Recipe hparams: ``mode`` and the sources it needs (see the module table),
        ``mixer`` (dict: ``name`` + options), ``init``, ``keep_attention``,
        ``switch_step``, ``logit_kd_after_switch``, ``teacher_update_every``.
    load_task_model : callable
        ``source -> model`` with the task head (e.g. :func:`load_ctc_model` bound to
        the vocabulary size).
    """
    mode = hp.get("mode")
    if mode not in RECIPE_MODES:
        raise ConfigError(f"unknown mode '{mode}'; choose one of {RECIPE_MODES}")
    if mode == "finetune":
        return None, None, None, None

    mixer = dict(hp.get("mixer") or {"name": "bimamba2"})
    mixer_name = mixer.pop("name", "bimamba2")

    def make_student(source):
        base = load_task_model(source) if isinstance(source, (str, os.PathLike)) else source
        if isinstance(base, Student):
            return base
        return convert(
            base, mixer=mixer_name, init=hp.get("init", "attention"),
            keep_attention=hp.get("keep_attention") or (), **mixer,
        ).train()

    teacher, loader = None, None
    kwargs = {"mode": mode}
    if mode in ("target", "hybrid", "unguided"):
        student_src = hp.get("student_source") or _require(hp, "teacher_source", mode)
        if mode != "unguided":
            teacher = load_task_model(_require(hp, "teacher_source", mode)).eval()
        model = make_student(student_src)
        if mode == "hybrid":
            kwargs["switch_step"] = _require(hp, "switch_step", mode)
            kwargs["logit_kd_after_switch"] = hp.get("logit_kd_after_switch", True)
    elif mode == "trajectory":
        src = _require(hp, "pretrained_source", mode)
        teacher = load_task_model(src)
        # The student converts the very teacher it follows: a head drawn at load time
        # (a self-supervised checkpoint has none) is drawn once and shared.
        model = make_student(hp.get("student_source") or teacher)
        kwargs["teacher_update_every"] = hp.get("teacher_update_every", 1)
    else:  # waypoint
        src = hp.get("student_source") or _require(hp, "pretrained_source", mode)
        model = make_student(src)
        kwargs["waypoints"] = discover_waypoints(_require(hp, "waypoint_dir", mode))
        loader = load_task_model
    return model, teacher, Guidance(**kwargs), loader
