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
from dataclasses import dataclass, field

from cald_speech.data.audio import audio_info, check_finite
from cald_speech.errors import AudioError, DataError

logger = logging.getLogger(__name__)

#: SpeechBrain's CSV loader replaces ``$name`` in every value; such text cannot be stored as is.
SPEECHBRAIN_VARIABLE = re.compile(r"\$([\w.]+)")

#: What each skip reason means, for the printed summary.
SKIP_REASONS = {
    "no_audio": "transcript line without audio",
    "no_transcript": "audio without transcript line",
    "empty_transcript": "empty transcript",
    "duplicate_id": "duplicate utterance id",
    "duplicate_audio": "second audio file for the same utterance",
    "unreadable_audio": "unreadable or empty audio",
    "missing_recording": "recording listed but missing on disk",
    "no_recordings": "record without any recording",
    "too_long": "longer than max_duration",
    "too_short": "shorter than min_duration",
    "unsafe_text": "text with '$name' (read as a variable by SpeechBrain)",
}

#: How many skipped items of each reason are logged one by one.
MAX_WARNINGS_PER_REASON = 5

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


class SkipCounter:
    """Counts skipped items by reason and logs the first few of each reason.

    Arguments
    ---------
    split : str
        Name used in the log messages.
    max_warnings : int
        Items of one reason logged one by one; the rest are only counted.

    Example
    -------
    >>> c = SkipCounter("dev")
    >>> c.skip("no_audio", "/data/1-2-3 (1-2.trans.txt line 3)", warn=False)
    >>> dict(c.counts)
    {'no_audio': 1}
    >>> c.total
    1
    """

    def __init__(self, split, max_warnings=MAX_WARNINGS_PER_REASON):
        self.split = split
        self.max_warnings = max_warnings
        self.counts = Counter()
        self.examples = {}

    def skip(self, reason, item, detail=None, warn=True):
        """Counts one skipped item; ``warn`` logs it (up to ``max_warnings`` per reason)."""
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < self.max_warnings:
            self.examples[reason].append(str(item))
            if warn:
                what = SKIP_REASONS.get(reason, reason)
                logger.warning(
                    "%s: skipped %s: %s%s", self.split, str(item), what,
                    f" ({detail})" if detail else "",
                )

    @property
    def total(self):
        """Number of skipped items over all reasons."""
        return sum(self.counts.values())


@dataclass
class SplitSummary:
    """What the preparation of one split produced.

    Attributes
    ----------
    split : str
        Split name (the CSV is ``<split>.csv``).
    csv : str
        Path of the manifest.
    kept : int
        Rows written.
    skipped : dict
        Skipped items by reason (keys of :data:`SKIP_REASONS`).
    hours : float
        Total duration of the kept rows, in hours.
    sample_rates : dict
        Number of kept files per sample rate (keys are strings, as in JSON).
    examples : dict
        A few skipped items per reason.
    up_to_date : bool
        True when the manifest was already up to date and nothing was done.
    """

    split: str
    csv: str
    kept: int = 0
    skipped: dict = field(default_factory=dict)
    hours: float = 0.0
    sample_rates: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    up_to_date: bool = False

    @property
    def total_skipped(self):
        """Number of skipped items over all reasons."""
        return sum(self.skipped.values())

    def to_dict(self):
        """A JSON-serialisable copy."""
        return {
            "split": self.split,
            "csv": self.csv,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "hours": self.hours,
            "sample_rates": dict(self.sample_rates),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }

    @classmethod
    def from_dict(cls, d, up_to_date=False):
        """Rebuilds a summary written by :meth:`to_dict`."""
        return cls(
            split=d["split"],
            csv=d["csv"],
            kept=int(d["kept"]),
            skipped=dict(d.get("skipped", {})),
            hours=float(d.get("hours", 0.0)),
            sample_rates=dict(d.get("sample_rates", {})),
            examples=dict(d.get("examples", {})),
            up_to_date=up_to_date,
        )


@dataclass
class PrepSummary:
    """What a corpus preparation produced, split by split.

    Example
    -------
    >>> s = PrepSummary("LibriSpeech", "/save")
    >>> s.splits["dev-clean"] = SplitSummary(
    ...     "dev-clean", "/save/dev-clean.csv", kept=10, skipped={"no_audio": 2}, hours=0.01)
    >>> print(s)  # doctest: +NORMALIZE_WHITESPACE
    LibriSpeech manifests in /save
    split      kept  skipped  hours   status
    dev-clean    10        2  0.010   written
      dev-clean skipped: 2 transcript line without audio
    >>> s.kept, s.hours
    (10, 0.01)
    """

    corpus: str
    save_folder: str
    splits: dict = field(default_factory=dict)

    @property
    def up_to_date(self):
        """True when every split was already up to date."""
        return bool(self.splits) and all(s.up_to_date for s in self.splits.values())

    @property
    def kept(self):
        """Rows written over all splits."""
        return sum(s.kept for s in self.splits.values())

    @property
    def hours(self):
        """Hours of audio over all splits."""
        return round(sum(s.hours for s in self.splits.values()), 6)

    def to_dict(self):
        """A JSON-serialisable copy."""
        return {
            "corpus": self.corpus,
            "save_folder": self.save_folder,
            "splits": {
                k: v.to_dict() | {"up_to_date": v.up_to_date} for k, v in self.splits.items()
            },
        }

    def __str__(self):
        names = list(self.splits)
        w = max([len("split")] + [len(n) for n in names])
        lines = [
            f"{self.corpus} manifests in {self.save_folder}",
            f"{'split':<{w}}  {'kept':>6}  {'skipped':>7}  {'hours':<6}  status",
        ]
        notes = []
        for name in names:
            s = self.splits[name]
            status = "up to date, skipped" if s.up_to_date else "written"
            lines.append(
                f"{name:<{w}}  {s.kept:>6}  {s.total_skipped:>7}  {s.hours:<6.3f}  {status}"
            )
            if s.skipped:
                parts = [
                    f"{n} {SKIP_REASONS.get(r, r)}" for r, n in sorted(s.skipped.items()) if n
                ]
                notes.append(f"  {name} skipped: " + ", ".join(parts))
        return "\n".join(lines + notes)


def tree_fingerprint(*paths):
    """A cheap fingerprint of files and folders: count, newest mtime and total size.

    Folders are walked recursively; the folders' own modification times count too, so
    adding, removing or renaming a file changes the fingerprint. Paths that do not
    exist are recorded as missing.

    Arguments
    ---------
    *paths : str
        Files or folders.

    Returns
    -------
    dict
        ``{"files": int, "newest_mtime_ns": int, "bytes": int, "missing": [...]}``

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "a.txt"), "w").write("hi")
    >>> fp = tree_fingerprint(d)
    >>> fp["files"], fp["bytes"]
    (1, 2)
    >>> _ = open(os.path.join(d, "b.txt"), "w").write("there")
    >>> tree_fingerprint(d) == fp
    False
    """
    files = 0
    newest = 0
    size = 0
    missing = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.exists(p):
            missing.append(os.path.abspath(p))
            continue
        st = os.stat(p)
        newest = max(newest, st.st_mtime_ns)
        if not os.path.isdir(p):
            files += 1
            size += st.st_size
            continue
        stack = [p]
        seen = {os.path.realpath(p)}
        while stack:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        st = entry.stat()
                    except OSError:  # a dangling link
                        continue
                    newest = max(newest, st.st_mtime_ns)
                    if entry.is_dir():
                        real = os.path.realpath(entry.path)
                        if real not in seen:  # linked folders are walked once
                            seen.add(real)
                            stack.append(entry.path)
                    else:
                        files += 1
                        size += st.st_size
    return {"files": files, "newest_mtime_ns": newest, "bytes": size, "missing": missing}


class PrepState:
    """The sidecar JSON that makes a preparation idempotent.

    For each split it records the options used, a fingerprint of the source files and
    the size and mtime of the manifest written. A later run with the same options, an
    unchanged source and an untouched manifest can skip the split.

    Arguments
    ---------
    path : str
        The sidecar JSON file, e.g. ``<save_folder>/librispeech_prepare.json``.

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> csv_path = os.path.join(d, "dev.csv")
    >>> write_csv_atomic(csv_path, ["ID", "duration"], [{"ID": "a", "duration": 1.0}])
    >>> state = PrepState(os.path.join(d, "prep.json"))
    >>> summary = SplitSummary("dev", csv_path, kept=1, hours=0.0003)
    >>> state.record("dev", {"x": 1}, {"files": 3}, summary)
    >>> state.save()
    >>> PrepState(os.path.join(d, "prep.json")).up_to_date("dev", {"x": 1}, {"files": 3}).kept
    1
    >>> PrepState(os.path.join(d, "prep.json")).up_to_date("dev", {"x": 2}, {"files": 3}) is None
    True
    """

    VERSION = 1

    def __init__(self, path):
        self.path = os.fspath(path)
        self.splits = {}
        if os.path.isfile(self.path):
            try:
                with open(self.path, encoding="utf-8") as f:
                    data = json.load(f)
                if data.get("version") == self.VERSION:
                    self.splits = dict(data.get("splits", {}))
            except (OSError, ValueError, AttributeError):
                logger.warning("%s: unreadable preparation record, preparing again", self.path)
                self.splits = {}

    @staticmethod
    def _csv_stat(csv_path):
        st = os.stat(csv_path)
        return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    def up_to_date(self, split, options, fingerprint):
        """Returns the recorded :class:`SplitSummary` if the split is up to date, else None."""
        entry = self.splits.get(split)
        if not entry:
            return None
        if entry.get("options") != _jsonable(options):
            return None
        if entry.get("fingerprint") != _jsonable(fingerprint):
            return None
        summary = entry.get("summary") or {}
        csv_path = summary.get("csv")
        if not csv_path or not os.path.isfile(csv_path):
            return None
        if entry.get("csv_stat") != self._csv_stat(csv_path):
            return None
        return SplitSummary.from_dict(summary, up_to_date=True)

    def record(self, split, options, fingerprint, summary):
        """Remembers a freshly written split (call :meth:`save` afterwards)."""
        self.splits[split] = {
            "options": _jsonable(options),
            "fingerprint": _jsonable(fingerprint),
            "summary": summary.to_dict(),
            "csv_stat": self._csv_stat(summary.csv),
        }

    def forget(self, split):
        """Drops a split's record (its manifest is no longer known to be valid)."""
        self.splits.pop(split, None)

    def save(self):
        """Writes the sidecar atomically."""
        write_json_atomic(self.path, {"version": self.VERSION, "splits": self.splits})


def _jsonable(obj):
    """Round-trips through JSON so that tuples and lists compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def callable_name(fn):
    """A stable name for a callable option (recorded instead of the object)."""
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


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


def empty_split_error(csv_path, split, counter, what, fix):
    """The DataError raised when a split would produce an empty manifest."""
    skipped = ", ".join(
        f"{n} {SKIP_REASONS.get(r, r)}" for r, n in sorted(counter.counts.items())
    ) or "nothing found"
    return DataError(csv_path, f"split '{split}' has no usable {what} (skipped: {skipped})", fix)
