"""The CTC speech-recognition recipe (``recipes/LibriSpeech/ASR/train.py``).

Teacher fine-tuning (``mode: finetune``) or CALD (every guidance mode), with a character
or SentencePiece tokenizer; the packaged model carries its tokenizer.
"""

import logging
from functools import partial

from cald_speech.errors import ConfigError
from cald_speech.tasks.asr.brain import CTCBrain
from cald_speech.tasks.asr.data import ASR_DATA_DEFAULTS, asr_datasets
from cald_speech.tasks.asr.model import ctc_model_from_config, load_ctc_model, share_start_head
from cald_speech.tasks.modes import build_models
from cald_speech.tasks.recipe import COMMON_KEYS, Task, recipe_entry, run_recipe

logger = logging.getLogger(__name__)

#: Keys the ASR recipe reads (typos of these fail early).
ASR_KEYS = COMMON_KEYS | {"tokenizer", "text_column", "normalize_text", "wer_file",
                          "best_metric"}


class AsrTask(Task):
    """CTC recognition: tokenizer targets, a CTC head, WER/CER."""

    keys = ASR_KEYS
    defaults = {**ASR_DATA_DEFAULTS, **CTCBrain.TASK_DEFAULTS}
    brain_class = CTCBrain

    def check(self, hp):
        if hp["best_metric"] not in ("WER", "CER"):
            raise ConfigError(f"best_metric '{hp['best_metric']}' is not one of ['WER', 'CER']")

    def models(self, hp, csvs):
        vocab = len(hp["tokenizer"])
        load_task = partial(load_ctc_model, vocab_size=vocab)
        model, teacher, guidance, loader = build_models(hp, load_task)
        if guidance is not None and guidance.mode == "waypoint":
            share_start_head(model, hp, guidance, load_task, vocab)
        if model is None:  # finetune: the transformer itself
            if hp.get("model_source"):
                model = load_task(hp["model_source"])
            elif hp.get("model_config"):
                model = ctc_model_from_config(
                    hp["model_config"], vocab, hp.get("model_family", "wav2vec2")
                )
            else:
                raise ConfigError("mode 'finetune' needs model_source or model_config")
        return model, teacher, guidance, loader

    def datasets(self, hp, csvs, model):
        train, valid, tests = asr_datasets(hp, csvs, hp["tokenizer"])
        return train, valid, {split: (ds, {}) for split, ds in tests.items()}

    def package(self, hp):
        return hp["tokenizer"], {}


def run_asr(argv):
    """Runs the CTC recipe; returns per test split WER, CER and every loss term."""
    return run_recipe(AsrTask(), argv)


def main(argv=None):
    """Command-line entry of the CTC recipe."""
    return recipe_entry(run_asr, argv)
