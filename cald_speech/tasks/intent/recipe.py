"""The SLURP intent recipe (``recipes/SLURP/intent/train.py``).

Teacher fine-tuning or CALD, with one head (intents) or two (scenario and action, as in
CALD); label maps come from the train split. The packaged model is an
:class:`~cald_speech.tasks.intent.model.IntentModel` folder.
"""

import copy
import logging
import os
from functools import partial

import speechbrain as sb

from cald_speech.data.manifest import read_manifest
from cald_speech.errors import ConfigError
from cald_speech.tasks.intent.brain import IntentBrain
from cald_speech.tasks.intent.data import intent_dataset, read_prep_report
from cald_speech.tasks.intent.labels import BEST_METRICS, HEADS, LABEL_COLUMNS, LabelMaps
from cald_speech.tasks.intent.model import (
    IntentModel,
    bare_encoder,
    encoder_from_config,
    is_intent_model,
    load_encoder,
    load_head,
)
from cald_speech.tasks.modes import build_models, check_folder
from cald_speech.tasks.recipe import COMMON_KEYS, Task, recipe_entry, run_recipe

logger = logging.getLogger(__name__)

#: Keys the intent recipe reads (typos of these fail early).
INTENT_KEYS = COMMON_KEYS | {
    "heads", "pooling", "attention_dim", "head_dropout", "best_metric", "metrics_file",
    "confusion_top", "initial_folder",
}

#: Options of the intent head and their defaults.
HEAD_DEFAULTS = {"heads": "scenario_action", "pooling": "mean", "attention_dim": 128,
                 "head_dropout": 0.0}


class _Heads:
    """Heads by source folder: a saved intent model's own, or one new head per source
    (so a trajectory teacher and its student start from the same head)."""

    def __init__(self, hp, labels):
        heads = hp.get("heads", HEAD_DEFAULTS["heads"])
        if heads not in HEADS:
            raise ConfigError(f"unknown heads '{heads}'; choose one of {list(HEADS)}")
        self.tasks = HEADS[heads]
        self.pooling = hp.get("pooling", HEAD_DEFAULTS["pooling"])
        self.attention_dim = hp.get("attention_dim", HEAD_DEFAULTS["attention_dim"])
        self.dropout = hp.get("head_dropout", HEAD_DEFAULTS["head_dropout"])
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
    :func:`cald_speech.tasks.modes.build_models` (student = convert(teacher encoder)),
    each with a copy of its source's head: for target/hybrid/unguided the fine-tuned
    teacher's, for trajectory/waypoint the pretrained start's (a new head shared by
    student and co-trained teacher when that folder has none).
    """
    heads = _Heads(hp, labels)
    mode = hp.get("mode")
    if mode == "finetune":
        if hp.get("model_source"):
            src = check_folder(hp["model_source"], "model source")
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


class IntentTask(Task):
    """Intent classification: label maps from train, accuracies, preparation counts."""

    keys = INTENT_KEYS
    defaults = {"data_format": "slurp", **HEAD_DEFAULTS, **IntentBrain.TASK_DEFAULTS}
    brain_class = IntentBrain

    def check(self, hp):
        if hp["best_metric"] not in BEST_METRICS:
            raise ConfigError(f"best_metric '{hp['best_metric']}' is not one of {BEST_METRICS}")
        if len(hp["train_splits"]) != 1 or len(hp["valid_splits"]) != 1:
            raise ConfigError("give one train split and one valid split")

    def models(self, hp, csvs):
        splits = [*hp["train_splits"], *hp["valid_splits"], *hp["test_splits"]]
        self.skipped = read_prep_report(hp["manifest_folder"], splits)
        for split, counts in self.skipped.items():
            if counts:
                logger.warning("%s: recordings skipped in preparation: %s", split, counts)
        train_csv = csvs[hp["train_splits"][0]]
        train_labels = LabelMaps.from_rows(
            read_manifest(train_csv, ("ID", "duration", "wav", *LABEL_COLUMNS)), train_csv)
        model, teacher, guidance, loader = build_intent_models(hp, train_labels)
        _check_labels(model, teacher, train_labels, train_csv)
        logger.info("labels: %r", model.labels)
        return model, teacher, guidance, loader

    def datasets(self, hp, csvs, model):
        def make(split, sorting):
            ds, report = intent_dataset(csvs[split], model.labels, sorting,
                                        hp["max_duration"], hp["min_duration"])
            unk = report["unknown"]
            if unk["items"]:
                logger.warning(
                    "%s: %d item(s) with labels unseen in train %s: left out of the loss, "
                    "counted as errors", split, unk["items"], unk["labels"],
                )
            if report["skipped"]:
                logger.warning("%s: %d unusable item(s) skipped", split, report["skipped"])
            return ds, report

        train, _ = make(hp["train_splits"][0], hp["sorting"])
        valid, _ = make(hp["valid_splits"][0], "ascending")
        tests = {}
        for split in hp["test_splits"]:
            ds, report = make(split, "ascending")
            tests[split] = (ds, {"skipped_audio": report["skipped"],
                                 "skipped_recordings": sum(self.skipped.get(split, {})
                                                           .values())})
        return train, valid, tests

    def before_fit(self, hp, model):
        folder = hp.get("initial_folder")
        if hp["mode"] == "finetune" and folder:
            if sb.utils.distributed.if_main_process() and not is_intent_model(folder):
                model.save_pretrained(folder)  # the start of the trajectory, head included

    def package(self, hp):
        return None, {"skipped_in_preparation": self.skipped, "best_metric": hp["best_metric"]}


def run_intent(argv):
    """Runs the intent recipe.

    Returns
    -------
    dict
        Per test split: accuracies (intent, scenario, action, ``sa_acc``), counts of
        unknown labels and unreadable items, and the mean of every loss term.
    """
    return run_recipe(IntentTask(), argv)


def main(argv=None):
    """Command-line entry of the intent recipe."""
    return recipe_entry(run_intent, argv)



