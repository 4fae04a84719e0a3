"""SpeechBrain CSV manifests: atomic writing, validation, skip counting, up-to-date checks.

The corpus preparations (:mod:`cald_speech.data.librispeech`, :mod:`cald_speech.data.slurp`)
share these helpers. A manifest is a CSV file in SpeechBrain's format: a header line, an
``ID`` column with unique ids, a ``duration`` column in seconds and one row per utterance.
It is read by :meth:`speechbrain.dataio.dataset.DynamicItemDataset.from_csv`.

Example
-------
>>> import os, tempfile
>>> d = tempfile.mkdtemp()
>>> path = os.path.join(d, "dev.csv")
>>> rows = [{"ID": "u1", "duration": 1.5, "wav": "/data/u1.flac", "wrd": "HELLO"}]
>>> write_csv_atomic(path, ["ID", "duration", "wav", "wrd"], rows)
>>> print(open(path).read().strip())
ID,duration,wav,wrd
u1,1.5,/data/u1.flac,HELLO
>>> read_manifest(path, required=["ID", "duration", "wav"])[0]["wav"]
'/data/u1.flac'
"""

import csv
import json
import logging
import os
import re
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from cald_speech.data.audio import audio_info, check_finite
from cald_speech.errors import AudioError, DataError

logger = logging.getLogger(__name__)

#: SpeechBrain's CSV loader replaces ``$name`` in every value; such text cannot be stored as is.
SPEECHBRAIN_VARIABLE = re.compile(r"\$([\w.]+)")


SORTINGS = ("none", "ascending", "descending")
AUDIO_CHECKS = ("header", "full")


def write_csv_atomic(path, fieldnames, rows):
    """Writes a CSV file completely or not at all.

    The rows go to a temporary file in the same folder, which is then renamed over
    ``path`` (an atomic operation on POSIX and Windows): an interrupted or failing run
    never leaves a half-written manifest behind.

    Arguments
    ---------
    path : str or os.PathLike
        Destination CSV file; its folder is created when missing.
    fieldnames : list of str
        Column names, in order.
    rows : iterable of dict
        One dict per row; keys not in ``fieldnames`` raise ``ValueError``.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a", "b.csv")
    >>> write_csv_atomic(path, ["ID", "x"], [{"ID": "1", "x": 'say "hi", ok'}])
    >>> open(path).read().splitlines()[1]
    '1,"say ""hi"", ok"'
    """
    def write(f):
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)

    _write_atomic(path, write, newline="")


def _write_atomic(path, write, **open_kwargs):
    """Calls ``write(f)`` on a temporary file, then renames it over ``path``.

    The file gets the mode a plain ``open`` would give it (0666 less the umask), not
    the private 0600 of a temporary file, so shared manifests stay readable.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8", **open_kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path, obj):
    """Writes a JSON file completely or not at all (see :func:`write_csv_atomic`)."""
    def write(f):
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")

    _write_atomic(path, write)


def read_text_lines(path, remake, unreadable="check its permissions"):
    """The lines of a UTF-8 text file; an undecodable or unreadable file is a DataError.

    Arguments
    ---------
    path : str
        The file.
    remake : str
        The fix when the file is not UTF-8 (e.g. ``"re-create it as UTF-8 text"``).
    unreadable : str
        The fix when the file cannot be read.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> _ = open(path, "wb").write(b"ok\\n\\xff\\n")
    >>> read_text_lines(path, "re-create it as UTF-8 text")
    Traceback (most recent call last):
    ...
    cald_speech.errors.DataError: ...t.txt: not UTF-8 text (...) (fix: re-create it as UTF-8 text)
    """
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc})", remake) from None
    except OSError as exc:
        raise DataError(path, f"cannot be read ({exc})", unreadable) from None


def resolve_audio(value, csv_path, data_root=None):
    """The audio path of a manifest row: ``$data_root`` replaced, relative to the CSV.

    Example
    -------
    >>> resolve_audio("$data_root/a.wav", "/c/test.csv", "/data")
    '/data/a.wav'
    >>> resolve_audio("a.wav", "/c/test.csv")
    '/c/a.wav'
    """
    root = data_root if data_root is not None else os.path.dirname(os.path.abspath(csv_path))
    value = str(value).replace("$data_root", root).replace("${data_root}", root)
    if not os.path.isabs(value):
        value = os.path.join(os.path.dirname(os.path.abspath(csv_path)), value)
    return value


def read_manifest(path, required=("ID", "duration")):
    """Reads and validates a SpeechBrain CSV manifest.

    Arguments
    ---------
    path : str or os.PathLike
        The CSV file.
    required : sequence of str
        Columns that must be present.

    Returns
    -------
    list of dict
        The rows, in file order, with ``duration`` converted to float.

    Raises
    ------
    DataError
        When the file is missing or empty, a required column is absent, an ID repeats
        or a duration is not a positive number; the message names the file and line.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "bad.csv")
    >>> _ = open(path, "w").write("ID,duration\\nu1,abc\\n")
    >>> read_manifest(path)
    Traceback (most recent call last):
    ...
    cald_speech.errors.DataError: ...bad.csv: line 2: duration 'abc' is not a positive number...
    """
    path = os.fspath(path)
    fix = "re-create it with cald-prepare"
    if not os.path.isfile(path):
        raise DataError(path, "manifest not found", fix)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        if not header:
            raise DataError(path, "manifest is empty (no header line)", fix)
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                path, f"column(s) {missing} missing; found columns {list(header)}", fix
            )
        rows, seen = [], set()
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                raise DataError(path, f"line {line}: wrong number of fields", fix)
            if "ID" in row:
                if row["ID"] in seen:
                    raise DataError(path, f"line {line}: duplicate ID {row['ID']!r}", fix)
                seen.add(row["ID"])
            if "duration" in row:
                try:
                    row["duration"] = float(row["duration"])
                    ok = row["duration"] > 0
                except ValueError:
                    ok = False
                if not ok:
                    raise DataError(
                        path,
                        f"line {line}: duration {row['duration']!r} is not a positive number",
                        fix,
                    )
            rows.append(row)
    return rows


def _probe(path, check):
    try:
        sr, frames, _ = audio_info(path)
        if check == "full":
            import soundfile as sf

            with sf.SoundFile(path) as f:
                block = 1 << 16
                read = 0
                while True:
                    data = f.read(block, dtype="float32", always_2d=True)
                    if len(data) == 0:
                        break
                    check_finite(path, data, offset=read)
                    read += len(data)
            if read < frames:
                raise AudioError(
                    path, f"truncated: header says {frames} frames, only {read} decode",
                    "re-create the file",
                )
        return frames / sr, sr
    except AudioError as exc:
        return exc
    except Exception as exc:  # decoder errors of any kind
        return AudioError(path, f"could not decode audio ({exc})", "re-create the file")


def measure_rows(rows, counter, check_audio="header", min_duration=None, max_duration=None,
                 num_workers=4, desc=None):
    """Fills in ``duration`` for each row; skips and counts bad or out-of-range audio.

    Arguments
    ---------
    rows : list of dict
        Rows with a ``wav`` path (absolute) and no duration yet.
    counter : SkipCounter
        Receives the skipped rows.
    check_audio : str
        ``"header"`` reads only the header (fast); ``"full"`` decodes every file, which
        also catches truncated files.
    min_duration, max_duration : float or None
        Rows outside this range (seconds) are skipped and counted.
    num_workers : int
        Threads probing files in parallel.
    desc : str
        Progress-bar label (the bar shows only on a terminal).

    Returns
    -------
    kept : list of dict
        Rows with ``duration`` (seconds, float).
    sample_rates : dict
        Count of kept files by sample rate (string keys).
    """
    from tqdm import tqdm

    if check_audio not in AUDIO_CHECKS:
        raise ValueError(f"check_audio must be one of {AUDIO_CHECKS}, got {check_audio!r}")
    paths = [r["wav"] for r in rows]
    workers = max(1, int(num_workers or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(
                pool.map(lambda p: _probe(p, check_audio), paths),
                total=len(paths), desc=desc, disable=None, unit="file", leave=False,
            )
        )
    kept = []
    rates = Counter()
    for row, res in zip(rows, results):
        if isinstance(res, AudioError):
            counter.skip("unreadable_audio", row["wav"], detail=res.problem)
            continue
        duration, sr = res
        if max_duration is not None and duration > max_duration:
            counter.skip("too_long", row["wav"], detail=f"{duration:.2f} s", warn=False)
            continue
        if min_duration is not None and duration < min_duration:
            counter.skip("too_short", row["wav"], detail=f"{duration:.2f} s", warn=False)
            continue
        row = dict(row)
        row["duration"] = round(duration, 6)
        rates[str(sr)] += 1
        kept.append(row)
    return kept, dict(rates)


def check_text_fields(rows, fields, counter):
    """Skips and counts rows whose text SpeechBrain's CSV loader would alter.

    :meth:`DynamicItemDataset.from_csv` substitutes ``$name`` in every value, so such
    text cannot be stored as is.
    """
    out = []
    for row in rows:
        bad = [f for f in fields if SPEECHBRAIN_VARIABLE.search(str(row.get(f, "")))]
        if bad:
            counter.skip("unsafe_text", row["ID"], detail=f"column {bad[0]}: {row[bad[0]]!r}")
            continue
        out.append(row)
    return out


def sort_rows(rows, sorting="none"):
    """Orders rows by duration (``"ascending"``/``"descending"``) or by ID (``"none"``).

    Example
    -------
    >>> rows = [{"ID": "b", "duration": 2.0}, {"ID": "a", "duration": 3.0}]
    >>> [r["ID"] for r in sort_rows(rows)], [r["ID"] for r in sort_rows(rows, "ascending")]
    (['a', 'b'], ['b', 'a'])
    """
    if sorting not in SORTINGS:
        raise ValueError(f"sorting must be one of {SORTINGS}, got {sorting!r}")
    rows = sorted(rows, key=lambda r: r["ID"])
    if sorting == "ascending":
        rows.sort(key=lambda r: r["duration"])
    elif sorting == "descending":
        rows.sort(key=lambda r: -r["duration"])
    return rows


def list_entries(folder, limit=12):
    """A short listing of a folder's top entries for error messages (folders end in /)."""
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        return "nothing (the folder does not exist)"
    if not os.path.isdir(folder):
        return "a file, not a folder"
    names = sorted(os.listdir(folder))
    if not names:
        return "an empty folder"
    shown = [n + ("/" if os.path.isdir(os.path.join(folder, n)) else "") for n in names[:limit]]
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more


def check_options(sorting, check_audio, min_duration, max_duration):
    """Validates the options shared by the preparations; raises ``ConfigError``."""
    from cald_speech.errors import ConfigError

    if sorting not in SORTINGS:
        raise ConfigError(f"sorting={sorting!r} is not one of {SORTINGS}")
    if check_audio not in AUDIO_CHECKS:
        raise ConfigError(f"check_audio={check_audio!r} is not one of {AUDIO_CHECKS}")
    for name, v in (("min_duration", min_duration), ("max_duration", max_duration)):
        if v is not None and not v > 0:
            raise ConfigError(f"{name}={v!r} must be a positive number of seconds or None")
    if min_duration is not None and max_duration is not None and min_duration > max_duration:
        raise ConfigError(f"min_duration={min_duration} is larger than max_duration={max_duration}")
