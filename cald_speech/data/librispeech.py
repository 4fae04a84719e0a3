"""LibriSpeech (and corpora in its layout) → SpeechBrain CSV manifests.

The layout read is LibriSpeech's own::

    <data_folder>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <data_folder>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac

where each ``.trans.txt`` line is ``<speaker>-<chapter>-<utterance> WORDS ...``. Audio may
also be ``.wav``, and ``data_folder`` may be the parent folder holding ``LibriSpeech/``.
Each split gives ``<save_folder>/<split>.csv`` with the columns of SpeechBrain's
LibriSpeech recipe: ``ID,duration,wav,spk_id,wrd`` (absolute paths, seconds).

Example
-------
>>> import os, tempfile, numpy as np, soundfile as sf
>>> root = tempfile.mkdtemp()
>>> chapter = os.path.join(root, "LibriSpeech", "dev-clean", "84", "121123")
>>> os.makedirs(chapter)
>>> sf.write(os.path.join(chapter, "84-121123-0000.flac"), np.zeros(8000), 16000)
>>> with open(os.path.join(chapter, "84-121123.trans.txt"), "w") as f:
...     _ = f.write("84-121123-0000 GO DO YOU HEAR\\n")
>>> summary = prepare_librispeech(root, os.path.join(root, "csv"), splits=["dev-clean"])
>>> summary.splits["dev-clean"].kept
1
>>> print(open(os.path.join(root, "csv", "dev-clean.csv")).read().splitlines()[0])
ID,duration,wav,spk_id,wrd
>>> prepare_librispeech(root, os.path.join(root, "csv"), splits=["dev-clean"]).up_to_date
True
"""

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

#: The splits of the real corpus (any other split folder name works too).
LIBRISPEECH_SPLITS = (
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
)
#: Columns of the manifests, as in SpeechBrain's LibriSpeech recipe.
CSV_COLUMNS = ["ID", "duration", "wav", "spk_id", "wrd"]
#: Audio file extensions recognised, in order of preference.
AUDIO_EXTENSIONS = (".flac", ".wav")
#: Values of the ``spk_id`` option.
SPK_ID_FORMATS = ("speaker", "speaker-chapter")
#: Name of the sidecar JSON in ``save_folder`` that makes re-runs idempotent.
STATE_FILE = "librispeech_prepare.json"

_LAYOUT = (
    "<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt with "
    "<speaker>-<chapter>-<utterance>.flac (or .wav) beside it"
)


def prepare_librispeech(
    data_folder,
    save_folder,
    splits=("train-clean-100", "dev-clean", "test-clean"),
    sorting="none",
    min_duration=None,
    max_duration=None,
    audio_extensions=AUDIO_EXTENSIONS,
    check_audio="header",
    text_transform=None,
    spk_id="speaker",
    allow_empty=False,
    force=False,
    num_workers=4,
):
    """Writes one SpeechBrain CSV manifest per LibriSpeech split.

    Bad items are skipped and counted, never fatal: a transcript line without audio,
    audio without a transcript line, an empty transcript, a repeated utterance id, an
    unreadable or empty audio file (logged with its path) and utterances outside the
    duration range. Each CSV is written to a temporary file and renamed, so a failing
    run never leaves a half CSV. A re-run with the same options on an unchanged corpus
    finds its manifests up to date (recorded in ``<save_folder>/librispeech_prepare.json``)
    and does nothing.

    Arguments
    ---------
    data_folder : str
        Folder holding the split folders, or the parent of ``LibriSpeech/``.
    save_folder : str
        Where ``<split>.csv`` are written (created when missing).
    splits : sequence of str or str
        Split folder names; any subset, e.g. ``["dev-clean"]``.
    sorting : str
        ``"none"`` (rows ordered by ID), ``"ascending"`` or ``"descending"`` duration.
    min_duration, max_duration : float or None
        Utterances shorter/longer than this many seconds are skipped and counted.
    audio_extensions : sequence of str
        Audio file extensions, in order of preference when an utterance has several.
    check_audio : str
        ``"header"`` reads file headers only (fast); ``"full"`` decodes every file and
        also catches truncated files.
    text_transform : callable or None
        Applied to each transcript (e.g. a normaliser); ``None`` keeps the words as they
        are, with runs of whitespace collapsed.
    spk_id : str
        What the ``spk_id`` column holds: ``"speaker"`` (the first field of the id, the
        reader) or ``"speaker-chapter"`` (as SpeechBrain's own LibriSpeech recipe writes).
    allow_empty : bool
        When a split has no usable utterance: ``False`` (default) raises a DataError,
        ``True`` logs a warning and writes a header-only CSV.
    force : bool
        Prepare again even when the manifests are up to date.
    num_workers : int
        Threads reading audio headers.

    Returns
    -------
    PrepSummary
        Per split: rows kept, items skipped by reason, hours, sample rates, and whether
        the split was already up to date. ``print(summary)`` gives a table.

    Raises
    ------
    DataError
        When ``data_folder`` is not a LibriSpeech layout (the message says what was
        expected and what was found), a transcript is not UTF-8 text, or a split has no
        usable utterance (unless ``allow_empty``).
    """
    splits = requested_splits(splits, data_folder, "dev-clean")
    check_options(sorting, check_audio, min_duration, max_duration)
    if spk_id not in SPK_ID_FORMATS:
        raise ConfigError(f"spk_id={spk_id!r} is not one of {SPK_ID_FORMATS}")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in audio_extensions)
    root = find_librispeech_root(data_folder, splits)
    options = {
        "root": root,
        "sorting": sorting,
        "min_duration": min_duration,
        "max_duration": max_duration,
        "audio_extensions": list(exts),
        "check_audio": check_audio,
        "text_transform": callable_name(text_transform),
        "spk_id": spk_id,
        "allow_empty": allow_empty,
    }

    def source(split):
        split_dir = os.path.join(root, split)

        def read(counter):
            rows = scan_split(split_dir, counter, exts, text_transform, spk_id)
            return rows, f"check {split_dir} holds {_LAYOUT}"

        return SplitSource(split, options, tree_fingerprint(split_dir), read)

    return prepare_splits(
        "LibriSpeech", save_folder, STATE_FILE, CSV_COLUMNS, (source(s) for s in splits),
        ["wav", "spk_id", "wrd"], "utterance", sorting=sorting, min_duration=min_duration,
        max_duration=max_duration, check_audio=check_audio, allow_empty=allow_empty,
        force=force, num_workers=num_workers, log=logger,
    )


def find_librispeech_root(data_folder, splits):
    """Returns the folder that holds the requested split folders.

    Accepts the folder itself or its parent holding ``LibriSpeech/``.

    Raises
    ------
    DataError
        Saying which split folders were expected and what the folder holds instead.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> find_librispeech_root(d, ["dev-clean"])
    Traceback (most recent call last):
    ...
    cald_speech.errors.DataError: ...not a LibriSpeech layout: expected split folder(s) \
['dev-clean']...found: an empty folder...
    """
    data_folder = os.path.abspath(os.fspath(data_folder))
    if not os.path.isdir(data_folder):
        raise DataError(
            data_folder,
            "LibriSpeech folder not found" if not os.path.exists(data_folder) else "not a folder",
            "pass the folder that holds the split folders (e.g. dev-clean/) or LibriSpeech/",
        )
    candidates = [data_folder, os.path.join(data_folder, "LibriSpeech")]
    for cand in candidates:
        if all(os.path.isdir(os.path.join(cand, s)) for s in splits):
            return cand
    # Explain what is there instead.
    base = candidates[1] if os.path.isdir(candidates[1]) else data_folder
    missing = [s for s in splits if not os.path.isdir(os.path.join(base, s))]
    problem = (
        f"not a LibriSpeech layout: expected split folder(s) {missing} in {base}"
        + (" (or in its LibriSpeech/ subfolder)" if base == data_folder else "")
        + f", each holding {_LAYOUT}; found: {list_entries(base)}"
    )
    if _looks_like_split(base):
        fix = (
            f"{base} looks like a single split folder: pass its parent as data_folder "
            f"and splits=['{os.path.basename(base)}']"
        )
    else:
        fix = "pass the folder that holds the split folders, or choose splits that exist"
    raise DataError(data_folder, problem, fix)


def _looks_like_split(folder):
    """True when ``folder`` holds ``<speaker>/<chapter>/*.trans.txt``."""
    try:
        for spk in os.scandir(folder):
            if spk.is_dir():
                for chap in os.scandir(spk.path):
                    if chap.is_dir() and any(
                        n.endswith(".trans.txt") for n in os.listdir(chap.path)
                    ):
                        return True
    except OSError:
        return False
    return False


def scan_split(split_dir, counter, audio_extensions=AUDIO_EXTENSIONS, text_transform=None,
               spk_id="speaker"):
    """Pairs the transcript lines of one split with their audio files.

    Arguments
    ---------
    split_dir : str
        The split folder.
    counter : SkipCounter
        Receives the items that cannot be paired.
    audio_extensions : sequence of str
        Lower-case extensions with the dot, in order of preference.
    text_transform : callable or None
        Applied to each transcript.
    spk_id : str
        ``"speaker"`` or ``"speaker-chapter"`` (see :func:`prepare_librispeech`).

    Returns
    -------
    list of dict
        Rows with ``ID``, ``wav``, ``spk_id`` and ``wrd`` (no duration yet).

    Raises
    ------
    DataError
        When the folder holds no ``*.trans.txt`` at all, or a transcript is unreadable.
    """
    split_dir = os.path.abspath(split_dir)
    audio = {}  # (folder, utterance id) -> path
    transcripts = []
    seen_dirs = {os.path.realpath(split_dir)}
    for dirpath, dirnames, filenames in os.walk(split_dir, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in seen_dirs:
                seen_dirs.add(real)
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.endswith(".trans.txt"):
                transcripts.append(path)
                continue
            stem, ext = os.path.splitext(name)
            ext = ext.lower()
            if ext not in audio_extensions:
                continue
            key = (dirpath, stem)
            old = audio.get(key)
            if old is None:
                audio[key] = path
                continue
            # Two files for one utterance (e.g. .flac and .wav): keep the preferred one.
            old_ext = os.path.splitext(old)[1].lower()
            if audio_extensions.index(ext) < audio_extensions.index(old_ext):
                audio[key], path = path, old
            counter.skip("duplicate_audio", path, detail=f"kept {audio[key]}")

    if not transcripts:
        raise DataError(
            split_dir,
            f"not a LibriSpeech split: no transcript file (*.trans.txt) found; expected "
            f"{_LAYOUT}; found: {list_entries(split_dir)}",
            "point data_folder at a LibriSpeech-style corpus",
        )

    rows = []
    used = set()
    ids = set()
    for tpath in transcripts:
        folder = os.path.dirname(tpath)
        lines = read_text_lines(tpath, "re-create the transcript as UTF-8 text")
        for lineno, line in enumerate(lines, start=1):
            parts = line.split(maxsplit=1)
            if not parts:
                continue
            utt = parts[0]
            where = f"{tpath}:{lineno} ({utt})"
            if utt in ids:
                counter.skip("duplicate_id", where)
                continue
            ids.add(utt)
            key = (folder, utt)
            wav = audio.get(key)
            if wav is None:
                counter.skip("no_audio", where, detail=f"no {utt}{'/'.join(audio_extensions)}")
                continue
            used.add(key)
            words = " ".join(parts[1].split()) if len(parts) > 1 else ""
            if text_transform is not None and words:
                words = " ".join(str(text_transform(words)).split())
            if not words:
                counter.skip("empty_transcript", where)
                continue
            n_fields = 1 if spk_id == "speaker" else 2
            speaker = "-".join(utt.split("-")[:n_fields])
            rows.append({"ID": utt, "wav": wav, "spk_id": speaker, "wrd": words})
    for key in sorted(set(audio) - used):
        counter.skip("no_transcript", audio[key])
    return rows
