"""The CTC speech-recognition recipe (``recipes/LibriSpeech/ASR/train.py``).

Teacher fine-tuning (``mode: finetune``) or CALD (every guidance mode), with a character
or SentencePiece tokenizer; the packaged model carries its tokenizer.
"""

import logging
from functools import partial

from cald_speech.decoding import check_beam_options, check_lm_file, resolve_engine
from cald_speech.errors import ConfigError
from cald_speech.tasks.asr.brain import CTCBrain
from cald_speech.tasks.asr.data import ASR_DATA_DEFAULTS, _normalizer, asr_datasets
from cald_speech.tasks.asr.model import (
    ctc_model_from_config,
    has_ctc_head,
    load_ctc_model,
    share_start_head,
)
from cald_speech.tasks.asr.vocab import (
    report_unknown_characters,
    resolve_tokenizer,
    source_folders,
)
from cald_speech.tasks.modes import build_models
from cald_speech.tasks.recipe import COMMON_KEYS, Task, recipe_entry, run_recipe

logger = logging.getLogger(__name__)

#: Keys the ASR recipe reads (typos of these fail early).
ASR_KEYS = COMMON_KEYS | {"tokenizer", "text_column", "normalize_text", "wer_file",
                          "best_metric", "beam_size", "lm", "lm_weight", "word_bonus",
                          "beam_engine"}


class AsrTask(Task):
    """CTC recognition: tokenizer targets, a CTC head, WER/CER."""

    keys = ASR_KEYS
    defaults = {**ASR_DATA_DEFAULTS, **CTCBrain.TASK_DEFAULTS}
    brain_class = CTCBrain

    def __init__(self):
        self.origin, self.new_head = None, None

    def check(self, hp):
        if hp["best_metric"] not in ("WER", "CER"):
            raise ConfigError(f"best_metric '{hp['best_metric']}' is not one of ['WER', 'CER']")
        check_beam_options(hp["beam_size"], hp["lm"], hp["lm_weight"], hp["word_bonus"],
                           hp["beam_engine"])
        # The model's own vocabulary when its folder has one (before anything is built).
        hp["tokenizer"], self.origin, self.new_head = resolve_tokenizer(hp)
        if hp["lm"] is not None:  # a bad LM file fails now, not after training
            check_lm_file(hp["lm"], hp["tokenizer"],
                          resolve_engine(hp["beam_engine"], hp["tokenizer"]))
        logger.info("tokenizer: %r, from %s", hp["tokenizer"], self.origin)

    def models(self, hp, csvs):
        vocab = len(hp["tokenizer"])
        if self.new_head is None:  # a folder with a vocabulary but another head size
            self.new_head = next((f"{key} {folder} has no CTC head of {vocab} outputs: a new "
                                  "one" for key, folder in source_folders(hp)
                                  if not has_ctc_head(folder, vocab)), None)
        if self.new_head is not None:
            logger.warning("new CTC head: %s", self.new_head)
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
        report_unknown_characters(csvs, hp["tokenizer"], hp["text_column"], _normalizer(hp))
        return train, valid, {split: (ds, {}) for split, ds in tests.items()}

    def package(self, hp):
        return hp["tokenizer"], {"tokenizer": self.origin, "new_head": self.new_head}


def run_asr(argv):
    """Runs the CTC recipe; returns per test split WER, CER and every loss term."""
    return run_recipe(AsrTask(), argv)


def main(argv=None):
    """Command-line entry of the CTC recipe."""
    return recipe_entry(run_asr, argv)
