"""Models per guidance mode: the model trained, where it starts and the teacher that guides it.

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

Each source is a local model folder or a hub id (``org/name``) in the local Hugging
Face cache (:func:`cald_speech.hub.resolve_model_source`; never downloaded).
"""

import logging
import os

from cald_speech.distill.guidance import MODES, Guidance, discover_waypoints, waypoint_pace_for
from cald_speech.errors import ConfigError, DataError
from cald_speech.hub import resolve_model_source
from cald_speech.student import Student, convert

logger = logging.getLogger(__name__)


RECIPE_MODES = ("finetune", *MODES)

#: The hparams keys that name each mode's sources: a file runs the modes whose keys it has.
MODE_KEYS = {
    "finetune": ("model_source", "model_config"),
    "unguided": ("teacher_source", "student_source"),
    "target": ("teacher_source",),
    "hybrid": ("teacher_source",),
    "trajectory": ("pretrained_source",),
    "waypoint": ("pretrained_source",),
}


def modes_of(hp):
    """The modes an hparams file can run: those whose source keys it has.

    ``finetune.yaml`` (``model_source``, ``model_config``) runs ``finetune``;
    ``cald.yaml`` (``teacher_source``, ``pretrained_source``) runs the
    guidance modes.

    Example
    -------
    >>> modes_of({"teacher_source": None, "pretrained_source": None, "waypoint_dir": None})
    ('unguided', 'target', 'trajectory', 'waypoint', 'hybrid')
    """
    return tuple(m for m in RECIPE_MODES if any(k in hp for k in MODE_KEYS[m]))


def _require(hp, key, mode):
    if hp.get(key) in (None, ""):
        raise ConfigError(f"mode '{mode}' needs '{key}' in the hparams")
    return hp[key]


def _local(source, what):
    """A source as a local path string: a hub id becomes its cached snapshot folder."""
    return str(resolve_model_source(source, what))


def check_folder(path, what):
    """The local folder of a model source (a folder, or a hub id in the local cache).

    Returns it as a string; raises DataError naming ``what`` when it is not a folder, or
    (from :func:`~cald_speech.hub.resolve_model_source`) when a hub id is not cached.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> check_folder(folder, "teacher") == folder
    True
    >>> check_folder("/no/such/folder", "teacher")
    Traceback (most recent call last):
      ...
    cald_speech.errors.DataError: /no/such/folder: teacher folder not found (fix: ...)
    """
    folder = resolve_model_source(path, what)
    if not folder.is_dir():
        raise DataError(
            path, f"{what} folder not found",
            "give a local model folder (save_pretrained output), a hub id in the local "
            "Hugging Face cache, or train it first",
        )
    return str(folder)


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
        is_source = isinstance(source, (str, os.PathLike))
        base = load_task_model(_local(source, "student")) if is_source else source
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
            teacher = load_task_model(_local(_require(hp, "teacher_source", mode),
                                             "teacher")).eval()
        model = make_student(student_src)
        if mode == "hybrid":
            kwargs["switch_step"] = _require(hp, "switch_step", mode)
            kwargs["logit_kd_after_switch"] = hp.get("logit_kd_after_switch", True)
    elif mode == "trajectory":
        src = _require(hp, "pretrained_source", mode)
        teacher = load_task_model(_local(src, "pretrained model"))
        # The student converts the very teacher it follows: a head drawn at load time
        # (a self-supervised checkpoint has none) is drawn once and shared.
        model = make_student(hp.get("student_source") or teacher)
        kwargs["teacher_update_every"] = hp.get("teacher_update_every", 1)
    else:  # waypoint
        src = hp.get("student_source") or _require(hp, "pretrained_source", mode)
        model = make_student(src)
        kwargs["waypoints"] = discover_waypoints(_require(hp, "waypoint_dir", mode))
        kwargs["waypoint_pace"] = _waypoint_pace(hp, kwargs["waypoints"])
        loader = load_task_model
    return model, teacher, Guidance(**kwargs), loader


def _waypoint_pace(hp, waypoints):
    """``waypoint_pace`` of the hparams (``auto``: end on the last waypoint), with a
    warning when the student's updates stop short of the teacher's trajectory. The
    student's updates: ``total_updates``, or ``optimizer_step_limit`` when smaller."""
    pace = hp.get("waypoint_pace", 1.0)
    total = min((n for n in (hp.get("total_updates"), hp.get("optimizer_step_limit")) if n),
                default=None)
    if pace == "auto":
        if not total:
            raise ConfigError(
                "waypoint_pace: auto needs total_updates (the student's number of updates)")
        pace = waypoint_pace_for(waypoints, total)
        logger.info("waypoint guidance: %.3g teacher updates per student update", pace)
    elif isinstance(pace, (int, float)) and not isinstance(pace, bool) and pace > 0 and total:
        last, reached = waypoints[-1][0], total * pace
        if reached < last:
            logger.warning(
                "waypoint guidance: %d student updates at pace %g reach the teacher's "
                "update %d of %d: the student follows only the first %.0f %% of its "
                "trajectory; set waypoint_pace: auto (or %.3g) to follow all of it",
                total, pace, reached, last, 100 * reached / last,
                waypoint_pace_for(waypoints, total),
            )
    return pace
