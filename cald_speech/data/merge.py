"""Several SpeechBrain CSV manifests → one (``cald-prepare merge``).

Training recipes read one manifest per split; to train on several corpora (a
LibriSpeech-format corpus and a SLURP one, say), merge their manifests and point the
recipe at the result with ``data_format: csv``. Columns are kept by name; a column can be
renamed per input (SLURP's ``transcript`` becomes LibriSpeech's ``wrd``). IDs must stay
unique: a repeated ID is an error naming both files, unless ``prefix_ids`` puts each
input's number in front of its IDs.

Rows can be chosen by the synthetic voice that spoke them (``keep_voices`` /
``drop_voices``: voice names or engine names, looked up in the ``utterances.tsv`` table
that :mod:`cald_speech.data.synth` writes beside each corpus); that is how a model is
trained without one engine and tested on it.

Example
-------
>>> import os, tempfile
>>> from cald_speech.data.manifest import read_manifest, write_csv_atomic
>>> d = tempfile.mkdtemp()
>>> a, b = os.path.join(d, "a.csv"), os.path.join(d, "b.csv")
>>> write_csv_atomic(a, ["ID", "duration", "wav", "spk_id", "wrd"],
...                  [{"ID": "1-1-0", "duration": 2.0, "wav": "x.flac", "spk_id": "1",
...                    "wrd": "HELLO"}])
>>> write_csv_atomic(b, ["ID", "duration", "wav", "semantics", "transcript"],
...                  [{"ID": "s1", "duration": 1.0, "wav": "y.flac", "semantics": "{}",
...                    "transcript": "wake me up"}])
>>> out = os.path.join(d, "train.csv")
>>> merge_manifests(out, [a, b], columns=["ID", "duration", "wav", "wrd"],
...                 rename={"transcript": "wrd"})
2
>>> [(r["ID"], r["wrd"]) for r in read_manifest(out)]
[('1-1-0', 'HELLO'), ('s1', 'wake me up')]
"""

import csv
import os

from cald_speech.data.manifest import read_manifest, write_csv_atomic
from cald_speech.data.synth import UTTERANCES_FILE
from cald_speech.errors import ConfigError, DataError


def read_voice_tables(corpora):
    """``{absolute audio path: voice name}`` from each synthetic corpus's utterances.tsv."""
    voices = {}
    for root in corpora:
        table = os.path.join(root, UTTERANCES_FILE)
        if not os.path.isfile(table):
            raise DataError(table, "not found: choosing rows by voice needs the table that "
                            "cald-synth writes beside a corpus",
                            "give the folders of corpora made by cald-synth")
        with open(table, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                voices[os.path.abspath(os.path.join(root, row["file"]))] = row["voice"]
    return voices


def _matches(voice, names):
    """A voice matches a name that is its own or its engine's (``festival`` ~ ``festival-*``)."""
    return any(voice == n or voice.startswith(n + "-") for n in names)


def merge_manifests(out, inputs, columns=("ID", "duration", "wav", "wrd"), rename=None,
                    prefix_ids=False, keep_voices=None, drop_voices=None, voice_tables=()):
    """Writes the rows of every input manifest, in order, to one manifest.

    Arguments
    ---------
    out : str
        The merged CSV (written atomically: complete or not at all).
    inputs : list of str
        Manifests to merge (each validated as :func:`read_manifest` does).
    columns : sequence of str
        The columns of the merged manifest; each input must have them (after renaming).
    rename : dict, optional
        ``{old: new}`` column names applied to each input that has ``old``.
    prefix_ids : bool
        Put ``<input number>:`` in front of every ID (for inputs whose IDs collide).
    keep_voices, drop_voices : list of str, optional
        Keep only / drop the rows spoken by these voices or engines.
    voice_tables : list of str
        Synthetic corpus folders whose ``utterances.tsv`` name each file's voice (needed
        with ``keep_voices``/``drop_voices``; a row whose file is in no table is an error).

    Returns
    -------
    int
        The number of rows written.

    Raises
    ------
    DataError
        An input is missing or malformed, lacks a column, repeats another input's ID,
        or is the output itself.
    ConfigError
        No input, or no ``ID`` column asked for.
    """
    if not inputs:
        raise ConfigError("merge: give at least one input manifest")
    columns = list(columns)
    if "ID" not in columns:
        raise ConfigError(f"merge: columns {columns} must include ID")
    rename = dict(rename or {})
    by_voice = bool(keep_voices or drop_voices)
    if by_voice and not voice_tables:
        raise ConfigError("merge: choosing rows by voice needs voice_tables (the corpora)")
    voice_of = read_voice_tables(voice_tables) if by_voice else {}
    out_abs = os.path.abspath(out)
    rows, origin = [], {}
    for k, path in enumerate(inputs):
        if os.path.abspath(path) == out_abs:
            raise DataError(path, "is both an input and the output of the merge",
                            "write the merged manifest to another file")
        for row in read_manifest(path, required=()):
            row = {rename.get(key, key): value for key, value in row.items()}
            missing = [c for c in columns if c not in row]
            if missing:
                raise DataError(path, f"has no column(s) {missing} (after renaming "
                                f"{rename or 'nothing'}); found {sorted(row)}",
                                "rename a column with --rename OLD=NEW, or choose --columns")
            if by_voice:
                voice = voice_of.get(os.path.abspath(row.get("wav", "")))
                if voice is None:
                    raise DataError(path, f"{row['ID']}: its audio {row.get('wav')!r} is in "
                                    "none of the voice tables", "give the corpus it comes from")
                if keep_voices and not _matches(voice, keep_voices):
                    continue
                if drop_voices and _matches(voice, drop_voices):
                    continue
            if prefix_ids:
                row["ID"] = f"{k}:{row['ID']}"
            if row["ID"] in origin:
                raise DataError(path, f"ID {row['ID']!r} is also in {origin[row['ID']]}",
                                "merge with --prefix-ids, or rename the IDs")
            origin[row["ID"]] = path
            rows.append({c: row[c] for c in columns})
    write_csv_atomic(out, columns, rows)
    return len(rows)
