"""The CTC probe recipe (``recipes/LibriSpeech/probe/train.py``).

Freezes an upstream (``upstream_source``: a distilled layer student, or a teacher) and
trains a CTC head on a learned weighted sum of its layers, so that students and the
teacher's own layers are compared by CER/WER on held-out voices. The ASR task's data,
Brain and metrics, with a :class:`~cald_speech.tasks.probe.model.ProbeModel`.
"""


from cald_speech.errors import ConfigError
from cald_speech.gendistiller import load_upstream
from cald_speech.hub import source_record
from cald_speech.tasks.asr.recipe import ASR_KEYS, AsrTask
from cald_speech.tasks.modes import check_folder
from cald_speech.tasks.probe.model import ProbeModel
from cald_speech.tasks.recipe import recipe_entry, run_recipe

#: Keys the probe recipe reads (typos of these fail early).
PROBE_KEYS = ASR_KEYS | {"upstream_source", "probe_layers", "probe_head", "probe_hidden"}


class ProbeTask(AsrTask):
    """CTC recognition on the frozen layers of ``upstream_source``."""

    keys = PROBE_KEYS
    defaults = {**AsrTask.defaults, "probe_layers": None, "probe_head": "lstm",
                "probe_hidden": 256}

    def modes(self, hp):
        return ("probe",)

    def check(self, hp):
        super().check(hp)
        if not hp.get("upstream_source"):
            raise ConfigError("the probe recipe needs upstream_source (a layer student "
                              "from the distill recipe, or a teacher folder)")

    def models(self, hp, csvs):
        upstream = load_upstream(check_folder(hp["upstream_source"], "upstream"))
        model = ProbeModel(upstream, len(hp["tokenizer"]), hp["probe_layers"],
                           hp["probe_head"], hp["probe_hidden"])
        return model, None, None, None

    def package(self, hp):
        return hp["tokenizer"], {"upstream": source_record(hp["upstream_source"])}


def run_probe(argv):
    """Runs the probe recipe; returns per test split WER, CER and the CTC loss."""
    return run_recipe(ProbeTask(), argv)


def main(argv=None):
    """Command-line entry of the probe recipe."""
    return recipe_entry(run_probe, argv)
