"""Data of the ASR task: audio datasets with CTC targets for every split."""

import logging

from cald_speech.data.pipeline import add_ctc_targets, audio_dataset
from cald_speech.errors import ConfigError
from cald_speech.tasks.recipe import RECIPE_DEFAULTS

logger = logging.getLogger(__name__)

#: Options of the ASR data and their defaults.
ASR_DATA_DEFAULTS = {"text_column": "wrd", "normalize_text": False}


def _normalizer(hp):
    if not hp.get("normalize_text", ASR_DATA_DEFAULTS["normalize_text"]):
        return None
    from cald_speech.data.text import normalize_text

    return normalize_text


def asr_datasets(hp, csvs, tokenizer):
    """Train/valid/test datasets with ``sig``, ``ok``, ``words`` and ``tokens``."""
    text = hp.get("text_column", ASR_DATA_DEFAULTS["text_column"])
    opts = {k: hp.get(k, RECIPE_DEFAULTS[k]) for k in ("max_duration", "min_duration", "sorting")}
    norm = _normalizer(hp)

    def make(split, sorting):
        ds, report = audio_dataset(
            csvs[split], required=(text,), sorting=sorting,
            max_duration=opts["max_duration"], min_duration=opts["min_duration"],
        )
        if report["skipped"]:
            logger.warning("%s: %d unusable item(s) skipped", split, report["skipped"])
        return add_ctc_targets(ds, tokenizer, text, norm)

    train = [make(s, opts["sorting"]) for s in hp["train_splits"]]
    if len(train) > 1:
        raise ConfigError("give one train split (merge corpora in one manifest)")
    valid = [make(s, "ascending") for s in hp["valid_splits"]]
    tests = {s: make(s, "ascending") for s in hp["test_splits"]}
    return train[0], valid[0], tests
