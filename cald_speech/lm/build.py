"""Building an n-gram LM from text with KenLM's estimator (``lmplz``).

Example
-------
>>> import tempfile
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp())
>>> _ = (d / "a.txt").write_text("The cat sat.\\nThe dog sat on 2 mats!\\n")
>>> read_sentences([d / "a.txt"])
['The cat sat.', 'The dog sat on 2 mats!']
>>> normalise_sentences(read_sentences([d / "a.txt"]))[0]
['THE CAT SAT', 'THE DOG SAT ON TWO MATS']
"""

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from cald_speech.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Columns that hold the transcript in SpeechBrain CSV manifests (LibriSpeech, SLURP).
TEXT_COLUMNS = ("wrd", "transcript", "text", "sentence")


def find_tool(name):
    """The path of a KenLM tool (``lmplz``, ``build_binary``): ``$CALD_KENLM_BIN``, the
    running Python's bin folder (where ``make lm-tools`` puts it), then ``PATH``."""
    places = [os.environ.get("CALD_KENLM_BIN"), os.path.dirname(sys.executable)]
    for folder in places:
        if folder and os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    found = shutil.which(name)
    if found:
        return found
    raise ConfigError(f"KenLM's {name} was not found (looked in $CALD_KENLM_BIN, "
                      f"{os.path.dirname(sys.executable)} and PATH); fix: make lm-tools "
                      "(builds it from the kenlm source distribution), or set "
                      "CALD_KENLM_BIN to the folder that holds it")


def _csv_sentences(path, column):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        col = column or next((c for c in TEXT_COLUMNS if c in fields), None)
        if col not in fields:
            raise DataError(path, f"no text column (looked for {column or TEXT_COLUMNS}; "
                            f"columns are {fields})", "name it with --column")
        return [row[col] for row in reader]


def _jsonl_sentences(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise DataError(path, f"line {n} is not JSON", "give one JSON record per "
                                "line (SLURP's format)") from None
            text = record.get("sentence") or record.get("text")
            if text:
                out.append(text)
    return out


def read_sentences(paths, column=None):
    """Sentences of text files: ``.txt`` (one per line), ``.tsv`` (the last column),
    ``.csv`` (a SpeechBrain manifest's text column), ``.jsonl`` (SLURP records)."""
    sentences = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "text file not found", "give existing text files")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            sentences += _csv_sentences(path, column)
        elif suffix == ".jsonl":
            sentences += _jsonl_sentences(path)
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    line = line.rstrip("\n")
                    if suffix == ".tsv":
                        line = line.split("\t")[-1]
                    if line.strip():
                        sentences.append(line.strip())
    return sentences


def normalise_sentences(sentences, tokenizer=None):
    """``(normalised sentences, Counter of dropped words)``: the project's text normaliser
    (numbers, abbreviations, punctuation), then the model's case and units; a word with
    a character the model cannot emit is dropped (and counted)."""
    from cald_speech.data.text import normalize_text

    dropped = Counter()
    out = []
    for s in sentences:
        text = normalize_text(s)
        if tokenizer is not None:
            from cald_speech.decoding import lm_words_in_alphabet

            words = text.split()
            kept = lm_words_in_alphabet(text, tokenizer)
            if len(kept) != len(words):
                dropped.update(w for w in words if not lm_words_in_alphabet(w, tokenizer))
            text = " ".join(kept)
        if text:
            out.append(text)
    return out, dropped


def build_lm(texts, out, order=4, prune=None, model=None, exclude=(), column=None,
             binary=False, memory="20%"):
    """Estimates a modified Kneser-Ney n-gram LM of normalised sentences with ``lmplz``.

    Arguments
    ---------
    texts : list of str or os.PathLike
        Text files (see :func:`read_sentences`).
    out : str or os.PathLike
        The ARPA file to write; ``<out>.json`` records what went in.
    order : int
        N-gram order.
    prune : list of int, optional
        ``lmplz --prune`` thresholds per order (e.g. ``[0, 0, 1]``).
    model : str or os.PathLike, optional
        A model folder (or hub id) whose tokenizer fixes the alphabet and case.
    exclude : list of str or os.PathLike
        Text files (e.g. dev and test manifests) whose sentences are left out.
    column : str, optional
        Text column of CSV inputs.
    binary : bool
        Also write a KenLM binary ``<out stem>.bin`` (faster to load) and its word list.
    memory : str
        ``lmplz -S`` (memory for sorting).

    Returns
    -------
    dict
        What was built (sentences, words, dropped words, files).
    """
    order = int(order)
    if not 1 <= order <= 6:
        raise ConfigError(f"--order {order}: give 1 to 6 (KenLM is built for up to 6)")
    tokenizer = None
    if model is not None:
        from cald_speech.data.tokenizer import load_tokenizer
        from cald_speech.hub import resolve_model_source

        tokenizer = load_tokenizer(resolve_model_source(model))
    sentences, dropped = normalise_sentences(read_sentences(texts, column), tokenizer)
    held = set(normalise_sentences(read_sentences(exclude, column), tokenizer)[0])
    lmplz = find_tool("lmplz")
    kept = [s for s in sentences if s not in held]
    if not kept:
        raise DataError(texts[0] if texts else "texts", "no sentence left to train on",
                        "give text in the model's language and alphabet")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [lmplz, "-o", str(order), "-S", str(memory), "--discount_fallback"]
    if prune:
        cmd += ["--prune", *[str(int(p)) for p in prune]]
    with tempfile.TemporaryDirectory() as tmp:
        cmd += ["-T", tmp]
        partial = Path(tmp) / "lm.arpa"
        with open(partial, "wb") as arpa:
            run = subprocess.run(cmd, input=("\n".join(kept) + "\n").encode("utf-8"),
                                 stdout=arpa, stderr=subprocess.PIPE)
        if run.returncode != 0:
            tail = run.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise DataError(out, f"lmplz failed ({' / '.join(tail)})",
                            "check the text and the options (--prune needs one value per "
                            "order, non-decreasing)")
        shutil.move(str(partial), out)
    files = [str(out)]
    if binary:
        bin_path = out.with_suffix(".bin")
        subprocess.run([find_tool("build_binary"), str(out), str(bin_path)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        words = sorted({w for s in kept for w in s.split()})
        out.with_suffix(".words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
        files += [str(bin_path), str(out.with_suffix(".words.txt"))]
    info = {"order": order, "prune": prune, "sentences": len(kept),
            "excluded_sentences": len(sentences) - len(kept),
            "words": sum(len(s.split()) for s in kept),
            "vocabulary": len({w for s in kept for w in s.split()}),
            "dropped_words": sum(dropped.values()),
            "dropped_examples": [w for w, _ in dropped.most_common(10)],
            "model": None if model is None else str(model),
            "case": getattr(tokenizer, "case", "upper"), "sources": [str(t) for t in texts],
            "excluded": [str(t) for t in exclude], "files": files}
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(info, indent=2) + "\n")
    return info
