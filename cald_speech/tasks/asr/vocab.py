"""The recipe's CTC vocabulary: the model's own when its folder has one.

A fine-tuned hub checkpoint (``facebook/wav2vec2-base-960h``) or a model packaged by a
recipe carries its tokenizer; its CTC head only makes sense with it. So the ASR recipe
takes its tokenizer from the model folders it starts from (``model_source`` when
fine-tuning; ``teacher_source``, ``student_source``, ``pretrained_source`` otherwise),
with no flag:

- a folder with a tokenizer: that tokenizer, and the head it was trained with;
- ``tokenizer:`` set in the hparams as well: it must be the same vocabulary, else the
  run stops before anything is built, naming both;
- no folder with a tokenizer (a self-supervised checkpoint): the hparams' tokenizer, or
  the default character vocabulary, and a new CTC head — said at WARNING, with the
  reason, and recorded in the run's results (``new_head``).

Transcripts are put in the vocabulary's case; characters outside it are counted per
split and reported once (:func:`report_unknown_characters`).
"""

import logging
from collections import Counter

from cald_speech.data.hub_tokenizer import HubCTCTokenizer
from cald_speech.data.tokenizer import CharTokenizer, has_tokenizer, load_tokenizer, read_csv_column
from cald_speech.errors import ConfigError
from cald_speech.tasks.modes import check_folder

logger = logging.getLogger(__name__)

#: The folders a mode starts from, in the order their tokenizer is looked for.
SOURCE_KEYS = {"finetune": ("model_source",), "probe": ()}  # a probe trains a new head
CALD_SOURCE_KEYS = ("teacher_source", "student_source", "pretrained_source")


def source_folders(hp):
    """``[(key, local folder)]`` of the model sources the run's mode reads."""
    keys = SOURCE_KEYS.get(hp.get("mode"), CALD_SOURCE_KEYS)
    return [(key, check_folder(hp[key], key.replace("_", " ")))
            for key in keys if hp.get(key) not in (None, "")]


def _describe(tokenizer):
    return f"{type(tokenizer).__name__} with {len(tokenizer)} units"


def resolve_tokenizer(hp):
    """The run's tokenizer and why: ``(tokenizer, origin, new_head_reason or None)``.

    Arguments
    ---------
    hp : dict
        Recipe hparams: ``mode``, the sources, and ``tokenizer`` (``None``: the model's
        own, or the default character vocabulary).

    Raises
    ------
    ConfigError
        The hparams' tokenizer differs from a source folder's, or two source folders
        hold different vocabularies.
    """
    explicit = hp.get("tokenizer")
    found = [(key, folder, load_tokenizer(folder))
             for key, folder in source_folders(hp) if has_tokenizer(folder)]
    for key, folder, tok in found[1:]:
        if tok != found[0][2]:
            raise ConfigError(
                f"{found[0][0]} {found[0][1]} ({_describe(found[0][2])}) and {key} {folder} "
                f"({_describe(tok)}) have different vocabularies; their CTC heads cannot "
                "be distilled into one another: start both from the same fine-tuned model")
    if found:
        key, folder, tok = found[0]
        if explicit is not None and explicit != tok:
            raise ConfigError(
                f"the hparams' tokenizer ({_describe(explicit)}) is not the vocabulary of "
                f"{key} {folder} ({_describe(tok)}), whose CTC head was trained with it; "
                "fix: remove 'tokenizer' from the hparams to use the model's own, or start "
                "from a checkpoint without a CTC head")
        return tok, f"{key} {folder}", None
    tok = explicit if explicit is not None else CharTokenizer()
    sources = source_folders(hp)
    reason = None
    if sources:
        names = ", ".join(f"{k} {f}" for k, f in sources)
        reason = (f"{names} holds no tokenizer (a self-supervised checkpoint has neither "
                  f"vocabulary nor CTC head): a new CTC head for the recipe's "
                  f"{_describe(tok)}")
    origin = "the hparams" if explicit is not None else "the default character vocabulary"
    return tok, origin, reason


def report_unknown_characters(csvs, tokenizer, column, normalizer=None):
    """Counts, per split, transcript characters the tokenizer maps to ``<unk>``; warns once.

    Only vocabularies that map unknown characters to ``<unk>`` (hub vocabularies) are
    scanned; the project's character tokenizer refuses them with an error at encoding.

    Returns
    -------
    dict
        ``{split: Counter of characters}`` for splits with unknown characters.
    """
    if not isinstance(tokenizer, HubCTCTokenizer):
        return {}
    found = {}
    for split, path in csvs.items():
        counts = Counter()
        for text in read_csv_column(path, column):
            counts.update(tokenizer.unknown_characters(normalizer(text) if normalizer else text))
        if counts:
            found[split] = counts
            listed = ", ".join(f"{ch!r} x{n}" for ch, n in counts.most_common(8))
            logger.warning(
                "%s (%s): %d character(s) of the transcripts are not in the model's "
                "vocabulary and become <unk>: %s%s (fix: normalise the text, e.g. "
                "normalize_text: true)", split, path, sum(counts.values()), listed,
                ", ..." if len(counts) > 8 else "")
    return found
