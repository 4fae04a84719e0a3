"""Reading the sentence sources of the synthesizer and choosing each split's texts.

Sources are ``ID<TAB>sentence`` files (LJ Speech transcripts) and SLURP annotation
records. Sentences are normalised with :func:`cald_speech.data.text.normalize_text`,
filtered by length (:func:`_keep_sentence`) and shared out between test, dev and train
without overlap (:func:`_choose_texts`); the evaluation-only sentences can make up the
test split.

Example
-------
>>> from cald_speech.data.synth.options import SynthOptions
>>> opts = SynthOptions(min_words=2, max_words=4)
>>> [_keep_sentence(w, opts) for w in ("HELLO", "HELLO THERE", "A B C D E")]
[False, True, False]
>>> pool = [(i, f"SENTENCE {i}") for i in range(5)]
>>> chosen = _choose_texts(pool, [], (2, 1, 1), ("train", "dev", "test"), opts,
...                        eval_rng_tag=0, source="pool", eval_source=None, unit="lines")
>>> [[item for item, _ in chosen[s]] for s in ("test", "dev", "train")]
[[0], [1], [2, 3]]
"""

import hashlib
from pathlib import Path

import numpy as np

from cald_speech.data.text import normalize_text
from cald_speech.errors import ConfigError, DataError

#: Spoken characters per second, to estimate durations before synthesis (on the slow
#: side, so that the estimate rarely falls short).
CHARS_PER_SECOND = 14.0


def _check_text_file(path, what):
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} not found", "check the path, or pass another file")
    return path


def _read_tsv_sentences(path):
    """``ID<TAB>text`` lines (a line without a tab is all text) → list of (id, text)."""
    path = _check_text_file(path, "sentence file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot be read as UTF-8 text ({exc})",
                        "re-create it as UTF-8 'ID<TAB>sentence' lines") from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        sid, sep, text = line.partition("\t")
        if not sep:
            sid, text = f"{path.stem}-{lineno:06d}", line
        out.append((sid.strip(), text.strip()))
    return out


def _read_slurp_records(path):
    path = _check_text_file(path, "SLURP annotation file")
    from cald_speech.data.slurp import read_slurp_jsonl

    return [rec for _, rec in read_slurp_jsonl(path)]


def _keep_sentence(words, opts):
    n = len(words.split())
    return (
        n >= max(1, opts.min_words)
        and (not opts.max_words or n <= opts.max_words)
        and len(words) / CHARS_PER_SECOND <= opts.max_seconds
    )


def _file_digest(paths):
    h = hashlib.sha1()
    for p in paths:
        if p is not None and Path(p).is_file():
            h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def _take(pool, n, split, source, hint):
    if n == "all":
        if not pool:
            raise ConfigError(f"{split}: no usable sentence is left in {source}; {hint}")
        return list(pool)
    if n > len(pool):
        raise ConfigError(
            f"{split}: {n} sentences requested but only {len(pool)} usable ones are left in "
            f"{source}; {hint}"
        )
    return pool[:n]


def _choose_texts(pool, eval_items, counts, split_names, opts, eval_rng_tag, source,
                  eval_source, unit, train_hint=None):
    """Test, dev and train texts from a shuffled ``pool`` of (item, words).

    Test comes first from the pool, or, with ``opts.eval_texts``, from ``eval_items``
    ((item, raw text) pairs: normalised, filtered, deduplicated and shuffled here).
    """
    n_train, n_dev, n_test = counts
    train, dev, test = split_names
    hint = f"ask for fewer {unit}"
    chosen = {}
    if opts.eval_texts:
        eval_pool, eval_seen = [], set()
        for item, text in eval_items:
            words = normalize_text(text)
            if words and words not in eval_seen and _keep_sentence(words, opts):
                eval_seen.add(words)
                eval_pool.append((item, words))
        order = np.random.default_rng([opts.seed, eval_rng_tag]).permutation(len(eval_pool))
        eval_pool = [eval_pool[i] for i in order]
        chosen[test] = _take(eval_pool, n_test, test, eval_source, f"ask for fewer test {unit}")
    else:
        chosen[test] = _take(pool, n_test, test, source, hint)
        pool = pool[n_test:]
    chosen[dev] = _take(pool, n_dev, dev, source, hint)
    chosen[train] = _take(pool[n_dev:], n_train, train, source,
                          f"{hint} ({train_hint})" if train_hint else hint)
    return chosen
