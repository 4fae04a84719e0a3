"""Bookkeeping of a corpus preparation, and the split loop every corpus shares.

:class:`SkipCounter` counts (and logs a few of) the items a preparation leaves out and
why; :class:`SplitSummary` / :class:`PrepSummary` are what ``cald-prepare`` prints and
writes; :class:`PrepState` decides whether a manifest is up to date (same inputs, same
options, same code) so that a finished preparation is not done again;
:func:`prepare_splits` reads, measures and writes each split a corpus describes with a
:class:`SplitSource`.
"""

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cald_speech.data.manifest import (
    check_text_fields,
    measure_rows,
    sort_rows,
    write_csv_atomic,
    write_json_atomic,
)
from cald_speech.errors import DataError

logger = logging.getLogger(__name__)


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
    >>> from cald_speech.data.manifest import write_csv_atomic
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


def empty_split_error(csv_path, split, counter, what, fix):
    """The DataError raised when a split would produce an empty manifest."""
    skipped = ", ".join(
        f"{n} {SKIP_REASONS.get(r, r)}" for r, n in sorted(counter.counts.items())
    ) or "nothing found"
    return DataError(csv_path, f"split '{split}' has no usable {what} (skipped: {skipped})", fix)


def requested_splits(splits, data_folder, example):
    """The requested split names: one name or a sequence, repeats dropped, order kept.

    Raises
    ------
    DataError
        When no split is requested (the fix names ``example``).

    Example
    -------
    >>> requested_splits("dev", "/data", "dev"), requested_splits(["a", "b", "a"], "/data", "a")
    (['dev'], ['a', 'b'])
    """
    if isinstance(splits, str):
        splits = [splits]
    splits = list(dict.fromkeys(splits))
    if not splits:
        raise DataError(data_folder, "no split requested", f"pass e.g. splits=['{example}']")
    return splits


@dataclass
class SplitSource:
    """One split of a corpus, as a preparation hands it to :func:`prepare_splits`.

    Attributes
    ----------
    split : str
        Split name (the manifest is ``<save_folder>/<split>.csv``).
    options : dict
        The options the rows depend on (JSON-serialisable), recorded for up-to-date checks.
    fingerprint : dict
        A fingerprint of the source files (see :func:`tree_fingerprint`).
    read : callable
        ``read(counter)`` -> ``(rows, fix)``: the rows (``ID``, ``wav`` and the text
        columns, no duration yet), skipping and counting bad items in the
        :class:`SkipCounter`; ``fix`` is what the error says to do when no row is usable.
    """

    split: str
    options: dict
    fingerprint: dict
    read: Callable


def prepare_splits(corpus, save_folder, state_file, columns, sources, text_fields, what,
                   sorting="none", min_duration=None, max_duration=None,
                   check_audio="header", allow_empty=False, force=False, num_workers=4,
                   log=None):
    """Reads, measures and writes the manifests of a corpus's splits; skips those up to date.

    Each split is read by its source, its text checked (:func:`check_text_fields`), its
    audio measured (:func:`measure_rows`) and its rows sorted (:func:`sort_rows`). Nothing
    is written before every split has been read successfully; each CSV is then written
    atomically and recorded in ``<save_folder>/<state_file>``.

    Arguments
    ---------
    corpus : str
        Corpus name for the summary.
    save_folder : str
        Where ``<split>.csv`` are written (created when missing).
    state_file : str
        Name of the sidecar JSON (see :class:`PrepState`) in ``save_folder``.
    columns : list of str
        The manifest's columns.
    sources : iterable of SplitSource
        The splits, in order.
    text_fields : list of str
        Columns whose text SpeechBrain's CSV loader must not alter.
    what : str
        What a row is (``"utterance"``, ``"recording"``), for the empty-split error.
    sorting, min_duration, max_duration, check_audio, num_workers
        As for :func:`measure_rows` and :func:`sort_rows`.
    allow_empty : bool
        When a split has no usable row: ``False`` raises a DataError, ``True`` logs a
        warning and writes a header-only CSV.
    force : bool
        Prepare again even when a manifest is up to date.
    log : logging.Logger or None
        Where the progress lines go (the corpus module's logger, so that its logging
        settings apply); ``None`` is this module's.

    Returns
    -------
    PrepSummary

    Example
    -------
    >>> import os, tempfile, numpy as np, soundfile as sf
    >>> d = tempfile.mkdtemp()
    >>> wav = os.path.join(d, "a.wav")
    >>> sf.write(wav, np.zeros(8000), 16000)
    >>> src = SplitSource("dev", {}, tree_fingerprint(wav),
    ...                   lambda counter: ([{"ID": "a", "wav": wav, "wrd": "HI"}], "add audio"))
    >>> args = ("Toy", os.path.join(d, "csv"), "toy.json", ["ID", "duration", "wav", "wrd"])
    >>> print(prepare_splits(*args, [src], ["wav", "wrd"], "utterance"))  # doctest: +ELLIPSIS
    Toy manifests in .../csv
    split  kept  skipped  hours   status
    dev       1        0  0.000   written
    >>> prepare_splits(*args, [src], ["wav", "wrd"], "utterance").up_to_date
    True
    """
    log = log or logger
    save_folder = os.path.abspath(os.fspath(save_folder))
    state = PrepState(os.path.join(save_folder, state_file))
    summary = PrepSummary(corpus, save_folder)
    pending = []
    for src in sources:
        split = src.split
        csv_path = os.path.join(save_folder, f"{split}.csv")
        done = None if force else state.up_to_date(split, src.options, src.fingerprint)
        if done is not None and done.csv == csv_path:
            log.info("%s: %s is up to date, nothing to do", split, csv_path)
            summary.splits[split] = done
            continue
        counter = SkipCounter(split)
        rows, fix = src.read(counter)
        rows = check_text_fields(rows, text_fields, counter)
        rows, rates = measure_rows(
            rows, counter, check_audio=check_audio, min_duration=min_duration,
            max_duration=max_duration, num_workers=num_workers, desc=split,
        )
        if not rows:
            err = empty_split_error(csv_path, split, counter, what, fix)
            if not allow_empty:
                raise err
            log.warning("%s (writing a header-only CSV: allow_empty=True)", err)
        rows = sort_rows(rows, sorting)
        hours = sum(r["duration"] for r in rows) / 3600.0
        summary.splits[split] = SplitSummary(
            split, csv_path, kept=len(rows), skipped=dict(counter.counts), hours=hours,
            sample_rates=rates, examples=counter.examples,
        )
        pending.append((src, rows))

    # Nothing is written before every requested split has been read successfully.
    for src, rows in pending:
        s = summary.splits[src.split]
        write_csv_atomic(s.csv, columns, rows)
        state.record(src.split, src.options, src.fingerprint, s)
        state.save()
        log.info("%s: wrote %d rows (%.3f h) to %s", src.split, s.kept, s.hours, s.csv)
    return summary
