"""The layer-distillation recipe (``recipes/LibriSpeech/distill/train.py``).

``mode: gendistiller`` (layers generated one after another) or ``distilhubert``
(parallel heads); ``mixer`` chooses the time mixing (``{name: attention}``, or a mixer
fragment such as ``hparams/mixers/bimamba2.yaml`` for a linear-time student).
Unlabelled audio is enough: the manifests need ``ID``, ``duration`` and ``wav``.
"""

import logging

from cald_speech.data.pipeline import audio_dataset
from cald_speech.errors import ConfigError
from cald_speech.gendistiller import ARCHITECTURES, build_layer_student
from cald_speech.hub import source_record
from cald_speech.student import Student, load_model
from cald_speech.tasks.layers.brain import LayerDistillBrain
from cald_speech.tasks.modes import check_folder
from cald_speech.tasks.recipe import COMMON_KEYS, RECIPE_DEFAULTS, Task, recipe_entry, run_recipe

logger = logging.getLogger(__name__)

#: Keys the distill recipe reads (typos of these fail early).
LAYER_KEYS = COMMON_KEYS | {"target_layers", "encoder_layers", "generator", "cos_weight",
                            "metrics_file", "best_metric"}


class LayerDistillTask(Task):
    """A frozen teacher's target layers as the task; audio without labels."""

    keys = LAYER_KEYS
    defaults = {**LayerDistillBrain.TASK_DEFAULTS, "target_layers": None, "encoder_layers": 2,
                "generator": None}
    brain_class = LayerDistillBrain

    def modes(self, hp):
        return tuple(ARCHITECTURES)

    def check(self, hp):
        if hp.get("train_feature_encoder"):
            raise ConfigError("train_feature_encoder: a layer student keeps the teacher's "
                              "CNN frozen; set it to false")
        if not hp.get("teacher_source"):
            raise ConfigError("the distill recipe needs teacher_source (a wav2vec2, HuBERT "
                              "or WavLM model folder)")

    def models(self, hp, csvs):
        teacher = load_model(check_folder(hp["teacher_source"], "teacher"))
        if isinstance(teacher, Student):
            raise ConfigError(f"{hp['teacher_source']}: a student, not a transformers "
                              "teacher; give the transformer it was converted from")
        mixer = dict(hp.get("mixer") or {"name": "attention"})
        name = mixer.pop("name", "attention")
        model = build_layer_student(teacher, hp["mode"], hp["target_layers"],
                                    hp["encoder_layers"], name, mixer, hp["generator"])
        logger.info("layer student: %s, time mixing %s, teacher layers %s, %d encoder "
                    "layer(s)", hp["mode"], name, model.target_layers, hp["encoder_layers"])
        return model, teacher.eval(), None, None

    def datasets(self, hp, csvs, model):
        opts = {k: hp[k] for k in ("max_duration", "min_duration")}

        def make(split, sorting):
            ds, report = audio_dataset(csvs[split], sorting=sorting, **opts)
            if report["skipped"]:
                logger.warning("%s: %d unusable item(s) skipped", split, report["skipped"])
            return ds

        if len(hp["train_splits"]) != 1:
            raise ConfigError("give one train split (merge corpora in one manifest)")
        train = make(hp["train_splits"][0], hp.get("sorting", RECIPE_DEFAULTS["sorting"]))
        valid = make(hp["valid_splits"][0], "ascending")
        return train, valid, {s: (make(s, "ascending"), {}) for s in hp["test_splits"]}

    def package(self, hp):
        return None, {"teacher": source_record(hp["teacher_source"])}


def run_layer_distill(argv):
    """Runs the distill recipe; returns per test split the loss, L1 and cos per layer."""
    return run_recipe(LayerDistillTask(), argv)


def main(argv=None):
    """Command-line entry of the distill recipe."""
    return recipe_entry(run_layer_distill, argv)
