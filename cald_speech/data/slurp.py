"""SLURP (and corpora in its layout) → SpeechBrain CSV manifests for intent classification.

The layout read is SLURP's own::

    <data_folder>/dataset/slurp/{train,train_synthetic,devel,test}.jsonl   annotations
    <data_folder>/slurp_real/<file>     recordings named in each record's "recordings"
    <data_folder>/slurp_synth/<file>    recordings of train_synthetic.jsonl

One jsonl line is one SLURP record (``slurp_id``, ``sentence``, ``scenario``, ``action``,
``recordings`` = ``[{"file": ...}, ...]``, entities, ...). Headset recordings are the files
whose name ends in ``-headset.<ext>``; the others are far-field. Each recording gives one
row of ``<save_folder>/<split>.csv`` with the columns
``ID,duration,wav,semantics,transcript,scenario,action,intent``: ``semantics`` is the whole
record as a JSON string, ``transcript`` its sentence and ``intent`` is
``f"{scenario}_{action}"``, as SLURP defines it.

Example
-------
>>> import json, os, tempfile, numpy as np, soundfile as sf
>>> root = tempfile.mkdtemp()
>>> os.makedirs(os.path.join(root, "dataset", "slurp"))
>>> os.makedirs(os.path.join(root, "slurp_real"))
>>> rec = {"slurp_id": 7, "sentence": "wake me up at nine", "scenario": "alarm",
...        "action": "set", "recordings": [{"file": "audio-1-headset.flac"}]}
>>> with open(os.path.join(root, "dataset", "slurp", "devel.jsonl"), "w") as f:
...     _ = f.write(json.dumps(rec) + "\\n")
>>> sf.write(os.path.join(root, "slurp_real", "audio-1-headset.flac"), np.zeros(8000), 16000)
>>> s = prepare_slurp(root, os.path.join(root, "csv"), splits=["devel"])
>>> s.splits["devel"].kept
1
>>> import csv
>>> row = next(csv.DictReader(open(os.path.join(root, "csv", "devel.csv"))))
>>> row["ID"], row["intent"], json.loads(row["semantics"])["slurp_id"]
('7_audio-1-headset', 'alarm_set', 7)
"""

import json
import logging
import os

from cald_speech.data.manifest import check_options, list_entries, read_text_lines
from cald_speech.data.prep_state import (
    SplitSource,
    callable_name,
    prepare_splits,
    requested_splits,
    tree_fingerprint,
)
from cald_speech.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: The splits of the real corpus; ``train_synthetic`` is also accepted on its own.
SLURP_SPLITS = ("train", "devel", "test")
SYNTHETIC_SPLIT = "train_synthetic"
#: Columns of the manifests.
CSV_COLUMNS = ["ID", "duration", "wav", "semantics", "transcript", "scenario", "action", "intent"]
#: Values of the ``recording`` option.
RECORDINGS = ("headset", "far_field", "all")
#: Keys every record must have.
REQUIRED_KEYS = ("slurp_id", "sentence", "scenario", "action", "recordings")
#: Name of the sidecar JSON in ``save_folder`` that makes re-runs idempotent.
STATE_FILE = "slurp_prepare.json"

_LAYOUT = (
    "dataset/slurp/{train,devel,test}.jsonl (annotations) and slurp_real/ "
    "(audio; slurp_synth/ for train_synthetic)"
)


def is_headset(filename):
    """True for a headset recording (name ends in ``-headset.<ext>``).

    Example
    -------
    >>> is_headset("audio-1434542201-headset.flac"), is_headset("audio-1434542201.flac")
    (True, False)
    """
    return os.path.splitext(os.path.basename(filename))[0].endswith("-headset")


def read_slurp_jsonl(path):
    """Reads and validates a SLURP annotation file.

    Arguments
    ---------
    path : str
        A ``.jsonl`` file, one record per line (blank lines are ignored).

    Returns
    -------
    list of (int, dict)
        Line number and record.

    Raises
    ------
    DataError
        On a line that is not a JSON object, lacks one of :data:`REQUIRED_KEYS`, or has
        a malformed ``recordings`` list; the message gives the file and line number.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "devel.jsonl")
    >>> _ = open(path, "w").write('{"slurp_id": 1, "sentence": "hi"}\\n')
    >>> read_slurp_jsonl(path)
    Traceback (most recent call last):
    ...
    cald_speech.errors.DataError: ...devel.jsonl: line 1: record lacks key(s) \
['scenario', 'action', 'recordings']...
    """
    path = os.fspath(path)
    fix = "repair or remove that line (SLURP records hold " + ", ".join(REQUIRED_KEYS) + ")"
    records = []
    lines = read_text_lines(path, "re-create it as UTF-8 JSON lines",
                            "check the path and permissions")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"line {lineno}: not valid JSON ({exc.msg}, column {exc.colno})",
                            fix) from None
        if not isinstance(rec, dict):
            raise DataError(path, f"line {lineno}: a JSON {type(rec).__name__}, not a record",
                            fix)
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            raise DataError(path, f"line {lineno}: record lacks key(s) {missing}", fix)
        for key in ("sentence", "scenario", "action"):
            if not isinstance(rec[key], str):
                raise DataError(path, f"line {lineno}: {key!r} is not a string", fix)
        recs = rec["recordings"]
        if not isinstance(recs, list) or not all(
            isinstance(r, dict) and isinstance(r.get("file"), str) and r["file"] for r in recs
        ):
            raise DataError(
                path, f"line {lineno}: 'recordings' must be a list of {{\"file\": name}} objects",
                fix,
            )
        records.append((lineno, rec))
    return records


def prepare_slurp(
    data_folder,
    save_folder,
    splits=SLURP_SPLITS,
    recording="headset",
    use_synthetic=False,
    annotation_folder=None,
    real_audio_folder=None,
    synth_audio_folder=None,
    sorting="none",
    min_duration=None,
    max_duration=None,
    check_audio="header",
    text_transform=None,
    allow_empty=False,
    force=False,
    num_workers=4,
):
    """Writes one SpeechBrain CSV manifest per SLURP split, one row per recording.

    Recordings listed in a record but missing on disk, unreadable or empty audio, repeated
    ids and recordings outside the duration range are skipped and counted. Malformed
    annotation lines are errors (they would silently change the label set). Each CSV is
    written to a temporary file and renamed, so a failing run never leaves a half CSV. A
    re-run with the same options on unchanged files finds the manifests up to date
    (recorded in ``<save_folder>/slurp_prepare.json``) and does nothing.

    Arguments
    ---------
    data_folder : str
        Folder holding ``dataset/slurp/``, ``slurp_real/`` and (optionally) ``slurp_synth/``.
    save_folder : str
        Where ``<split>.csv`` are written (created when missing).
    splits : sequence of str or str
        Any of ``"train"``, ``"devel"``, ``"test"``, ``"train_synthetic"`` (or the name of
        any other ``<split>.jsonl`` in the annotation folder).
    recording : str
        Which real recordings to use: ``"headset"`` (close-talk), ``"far_field"`` or
        ``"all"``. Synthetic recordings are always used.
    use_synthetic : bool
        Add the ``train_synthetic`` records (audio in ``slurp_synth/``) to ``train.csv``.
    annotation_folder, real_audio_folder, synth_audio_folder : str or None
        Explicit locations, overriding ``<data_folder>/dataset/slurp``,
        ``<data_folder>/slurp_real`` and ``<data_folder>/slurp_synth``.
    sorting : str
        ``"none"`` (rows ordered by ID), ``"ascending"`` or ``"descending"`` duration.
    min_duration, max_duration : float or None
        Recordings shorter/longer than this many seconds are skipped and counted.
    check_audio : str
        ``"header"`` (fast) or ``"full"`` (decodes every file; catches truncation).
    text_transform : callable or None
        Applied to each transcript; ``None`` keeps the sentence as it is.
    allow_empty : bool
        A split without any usable recording is an error by default (a training run
        would otherwise fail later, far from the cause); ``True`` logs a warning and
        writes a header-only CSV instead.
    force : bool
        Prepare again even when the manifests are up to date.
    num_workers : int
        Threads reading audio headers.

    Returns
    -------
    PrepSummary
        Per split: rows kept, recordings skipped by reason, hours, sample rates, and
        whether the split was already up to date.

    Raises
    ------
    DataError
        When the folders are not a SLURP layout (the message says what was expected and
        what was found), an annotation line is malformed (file and line number), or a
        split has no usable recording (unless ``allow_empty``).
    """
    if recording not in RECORDINGS:
        raise ConfigError(f"recording={recording!r} is not one of {RECORDINGS}")
    splits = requested_splits(splits, data_folder, "devel")
    check_options(sorting, check_audio, min_duration, max_duration)

    data_folder = os.path.abspath(os.fspath(data_folder))
    if not os.path.isdir(data_folder):
        raise DataError(
            data_folder,
            "SLURP folder not found" if not os.path.exists(data_folder) else "not a folder",
            f"pass the folder holding {_LAYOUT}",
        )
    ann = os.path.abspath(annotation_folder or os.path.join(data_folder, "dataset", "slurp"))
    real = os.path.abspath(real_audio_folder or os.path.join(data_folder, "slurp_real"))
    synth = os.path.abspath(synth_audio_folder or os.path.join(data_folder, "slurp_synth"))
    if not os.path.isdir(ann):
        raise DataError(
            data_folder,
            f"not a SLURP layout: expected {_LAYOUT}; annotation folder {ann} not found; "
            f"found: {list_entries(data_folder)}",
            "point the data folder at the SLURP root, or give the folders: "
            "cald-prepare --annotation-folder/--real-audio (Python: annotation_folder=, "
            "real_audio_folder=)",
        )

    # Which annotation files and audio folder make up each split.
    sources = {}
    for split in splits:
        if split == SYNTHETIC_SPLIT:
            parts = [(SYNTHETIC_SPLIT, synth, "all", "synth_")]
        else:
            parts = [(split, real, recording, "")]
            if split == "train" and use_synthetic:
                parts.append((SYNTHETIC_SPLIT, synth, "all", "synth_"))
        resolved = []
        for name, audio_dir, selection, prefix in parts:
            jsonl = os.path.join(ann, f"{name}.jsonl")
            if not os.path.isfile(jsonl):
                found = sorted(n for n in os.listdir(ann) if n.endswith(".jsonl"))
                raise DataError(
                    jsonl,
                    f"annotation file for split '{name}' not found; {ann} holds "
                    f"{found or 'no .jsonl file'}",
                    "choose splits that exist (--splits), or give the folder of the .jsonl "
                    "files (cald-prepare --annotation-folder; Python: annotation_folder=)",
                )
            if not os.path.isdir(audio_dir):
                which = ("--synth-audio (Python: synth_audio_folder=)" if audio_dir == synth
                         else "--real-audio (Python: real_audio_folder=)")
                raise DataError(
                    audio_dir,
                    f"not a SLURP layout: audio folder for split '{name}' not found "
                    f"(expected {_LAYOUT}); {data_folder} holds: {list_entries(data_folder)}",
                    f"put the recordings there, or give their folder: cald-prepare {which}",
                )
            resolved.append((jsonl, audio_dir, selection, prefix))
        sources[split] = resolved

    base_options = {
        "recording": recording,
        "sorting": sorting,
        "min_duration": min_duration,
        "max_duration": max_duration,
        "check_audio": check_audio,
        "text_transform": callable_name(text_transform),
        "allow_empty": allow_empty,
    }
    folder_fps = {}

    def folder_fp(folder):
        if folder not in folder_fps:
            folder_fps[folder] = tree_fingerprint(folder)
        return folder_fps[folder]

    def source(split):
        parts = sources[split]
        options = dict(base_options, sources=[[j, a, s, p] for j, a, s, p in parts])
        fingerprint = {
            "annotations": tree_fingerprint(*[j for j, _, _, _ in parts]),
            "audio": {a: folder_fp(a) for _, a, _, _ in parts},
        }

        def read(counter):
            rows, not_selected = read_recordings(parts, counter, text_transform)
            fix = (
                f"{not_selected} recording(s) were left out by --recording {recording}; "
                "try --recording all (recipes: slurp_recording: all)"
                if not_selected
                else f"check that the recordings listed in {parts[0][0]} are in {parts[0][1]}"
            )
            return rows, fix

        return SplitSource(split, options, fingerprint, read)

    return prepare_splits(
        "SLURP", save_folder, STATE_FILE, CSV_COLUMNS, (source(s) for s in splits),
        ["wav", "transcript", "scenario", "action"], "recording", sorting=sorting,
        min_duration=min_duration, max_duration=max_duration, check_audio=check_audio,
        allow_empty=allow_empty, force=force, num_workers=num_workers, log=logger,
    )


def read_recordings(parts, counter, text_transform=None):
    """The rows of one split: one per selected recording of its annotation files.

    Arguments
    ---------
    parts : list of (str, str, str, str)
        ``(jsonl, audio_folder, selection, id_prefix)`` per annotation file, where
        ``selection`` is one of :data:`RECORDINGS`.
    counter : SkipCounter
        Receives the records and recordings left out (missing on disk, repeated ids).
    text_transform : callable or None
        Applied to each sentence.

    Returns
    -------
    rows : list of dict
        The manifest's columns but ``duration``.
    not_selected : int
        Recordings left out by ``selection``.
    """
    rows, ids, not_selected = [], set(), 0
    for jsonl, audio_dir, selection, prefix in parts:
        for lineno, rec in read_slurp_jsonl(jsonl):
            if not rec["recordings"]:
                counter.skip("no_recordings", f"{jsonl}:{lineno}", warn=False)
                continue
            sentence = " ".join(rec["sentence"].split())
            if text_transform is not None:
                sentence = " ".join(str(text_transform(sentence)).split())
            semantics = json.dumps(rec, ensure_ascii=False).replace("$", "\\u0024")
            for r in rec["recordings"]:
                fname = r["file"]
                if selection != "all" and is_headset(fname) != (selection == "headset"):
                    not_selected += 1
                    continue
                uid = f"{prefix}{rec['slurp_id']}_{os.path.splitext(fname)[0]}"
                uid = "_".join(uid.split())  # no whitespace in ids
                if uid in ids:
                    counter.skip("duplicate_id", f"{jsonl}:{lineno} ({uid})")
                    continue
                ids.add(uid)
                wav = os.path.join(audio_dir, fname)
                if not os.path.isfile(wav):
                    counter.skip("missing_recording", wav, detail=f"listed in {jsonl}:{lineno}")
                    continue
                rows.append({
                    "ID": uid,
                    "wav": wav,
                    "semantics": semantics,
                    "transcript": sentence,
                    "scenario": rec["scenario"],
                    "action": rec["action"],
                    "intent": f"{rec['scenario']}_{rec['action']}",
                })
    return rows, not_selected
