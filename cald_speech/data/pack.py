"""Packs the audio of manifests into a few compressed shards, for moving a corpus cheaply.

A synthetic training corpus is hours of small FLAC files; copying it to an accelerator
machine with a small transfer allowance is what this is for. Every distinct recording of
the given manifests is read once (the project's audio reader: mono, 16 kHz), and the
recordings are laid end to end, separated by a short silence, into ``--shards`` Ogg/Opus
files. Each input manifest is written again into the pack folder with its ``wav`` pointing
to a shard (relative to the pack folder) and the recording's sample range in ``start`` and
``stop``; the other columns are kept. :func:`load_pack_audio` (and the training loader of
:mod:`cald_speech.pretrain`) decodes each shard once and cuts the recordings out.

Opus is lossy: ``--kbps`` sets the bit rate (16 kbit/s keeps speech intelligible and
shrinks a 16-bit 16 kHz corpus about 16 times). The decoded length equals the packed
length exactly, so the ranges stay aligned.

Command line::

    python -m cald_speech.data.pack OUT train.csv dev.csv --kbps 16 --shards 16

Example
-------
>>> import os, tempfile, numpy as np, soundfile as sf
>>> from cald_speech.data.manifest import write_csv_atomic
>>> d = tempfile.mkdtemp()
>>> rng = np.random.default_rng(0)
>>> for i in range(3):
...     sf.write(os.path.join(d, f"u{i}.flac"), 0.1 * rng.standard_normal(4000 + 800 * i), 16000)
>>> rows = [{"ID": f"u{i}", "duration": 0.25 + 0.05 * i, "wav": os.path.join(d, f"u{i}.flac"),
...          "wrd": "A"} for i in range(3)]
>>> write_csv_atomic(os.path.join(d, "train.csv"), ["ID", "duration", "wav", "wrd"], rows)
>>> summary = pack_manifests([os.path.join(d, "train.csv")], os.path.join(d, "pack"), shards=2)
>>> summary["recordings"], summary["shards"]
(3, 2)
>>> audio = load_pack_audio(os.path.join(d, "pack", "train.csv"))
>>> [len(audio[f"u{i}"]) for i in range(3)]
[4000, 4800, 5600]
"""

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cald_speech.cli import add_version, fail, parse
from cald_speech.data.audio import SAMPLE_RATE, load_audio
from cald_speech.data.manifest import (
    read_manifest,
    resolve_audio,
    write_csv_atomic,
    write_json_atomic,
)
from cald_speech.errors import CaldError, ConfigError, DataError

__all__ = ["pack_manifests", "load_pack_audio", "opus_level"]

#: Silence between two packed recordings (s): longer than an Opus frame (20 ms).
GAP_S = 0.06
# libsndfile maps its compression level linearly to an Opus bit rate (measured with
# libsndfile 1.2.2: level 0 -> 258 kbit/s, level 1 -> 6.5 kbit/s).
_OPUS_MAX_KBPS, _OPUS_MIN_KBPS = 258.0, 6.5


def opus_level(kbps):
    """libsndfile's Opus compression level for a bit rate in kbit/s.

    Example
    -------
    >>> round(opus_level(16), 3)
    0.962
    """
    if not _OPUS_MIN_KBPS <= kbps <= _OPUS_MAX_KBPS:
        raise ConfigError(f"--kbps {kbps} is outside what Opus offers here "
                          f"({_OPUS_MIN_KBPS}-{_OPUS_MAX_KBPS})")
    return (_OPUS_MAX_KBPS - kbps) / (_OPUS_MAX_KBPS - _OPUS_MIN_KBPS)


def _write_shard(path, recordings, level):
    import soundfile as sf

    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    ranges, parts, pos = [], [], 0
    for wav in recordings:
        ranges.append((pos, pos + len(wav)))
        parts += [wav, gap]
        pos += len(wav) + len(gap)
    audio = np.concatenate(parts)
    tmp = path.with_suffix(".tmp.ogg")
    sf.write(tmp, audio, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=level)
    os.replace(tmp, path)
    return ranges


def pack_manifests(manifests, out, shards=16, kbps=16.0, jobs=None):
    """Packs the recordings of ``manifests`` into ``shards`` Opus files under ``out``.

    Arguments
    ---------
    manifests : list of str
        CSV manifests with ``ID``, ``duration`` and ``wav`` columns (names must differ:
        each is written to ``out`` under its own file name).
    out : str
        The pack folder (created).
    shards : int
        Number of Opus files (decoding runs one thread per shard).
    kbps : float
        Opus bit rate in kbit/s.
    jobs : int or None
        Threads for reading and encoding (default: all cores).

    Returns
    -------
    dict
        ``recordings``, ``hours``, ``shards``, ``bytes``, ``kbps``, the manifests written.
    """
    out = Path(out)
    names = [Path(m).name for m in manifests]
    if len(set(names)) != len(names):
        raise ConfigError(f"manifest file names repeat ({names}); each is written to {out} "
                          "under its own name")
    level = opus_level(kbps)
    tables = [(m, read_manifest(m, required=("ID", "duration", "wav"))) for m in manifests]
    paths = sorted({resolve_audio(r["wav"], m) for m, rows in tables for r in rows})
    if not paths:
        raise DataError(manifests[0], "no recordings to pack", "give non-empty manifests")
    jobs = jobs or os.cpu_count() or 1
    with ThreadPoolExecutor(jobs) as pool:
        waves = list(pool.map(lambda p: load_audio(p)[0].numpy(), paths))
    shards = max(1, min(shards, len(paths)))
    # Similar total duration per shard: the longest recording goes to the lightest shard.
    order = sorted(range(len(paths)), key=lambda i: -len(waves[i]))
    members, load = [[] for _ in range(shards)], [0] * shards
    for i in order:
        k = int(np.argmin(load))
        members[k].append(i)
        load[k] += len(waves[i])
    out.mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    where = {}

    def write(k):
        rel = f"shards/shard{k:03d}.ogg"
        ranges = _write_shard(out / rel, [waves[i] for i in members[k]], level)
        return {paths[i]: (rel, a, b) for i, (a, b) in zip(members[k], ranges)}

    with ThreadPoolExecutor(jobs) as pool:
        for part in pool.map(write, range(shards)):
            where.update(part)
    written = []
    for m, rows in tables:
        fields = list(rows[0].keys()) + [c for c in ("start", "stop") if c not in rows[0]]
        packed = []
        for r in rows:
            rel, a, b = where[resolve_audio(r["wav"], m)]
            packed.append({**r, "wav": rel, "start": a, "stop": b})
        target = out / Path(m).name
        write_csv_atomic(target, fields, packed)
        written.append(str(target))
    size = sum(f.stat().st_size for f in (out / "shards").glob("*.ogg"))
    summary = {"recordings": len(paths), "hours": round(sum(map(len, waves)) / SAMPLE_RATE
                                                         / 3600, 3),
               "shards": shards, "bytes": size, "kbps": kbps, "manifests": written,
               "sources": [str(m) for m in manifests]}
    write_json_atomic(out / "pack.json", summary)
    return summary


def load_pack_audio(csv_path, jobs=None):
    """``{ID: float32 array}`` of a manifest, each audio file decoded once.

    Rows with ``start``/``stop`` are cut from their file (a pack shard); other rows are
    read whole. Works on any manifest, packed or not.
    """
    import soundfile as sf

    rows = read_manifest(csv_path, required=("ID", "wav"))
    by_file = {}
    for r in rows:
        by_file.setdefault(resolve_audio(r["wav"], csv_path), []).append(r)

    def decode(item):
        path, members = item
        if all(r.get("start") not in (None, "") for r in members):
            try:
                data, rate = sf.read(path, dtype="float32", always_2d=True)
            except Exception as exc:
                raise DataError(path, f"could not decode ({exc})",
                                "pack the corpus again") from None
            if rate != SAMPLE_RATE:
                raise DataError(path, f"rate {rate} Hz, packs are {SAMPLE_RATE} Hz",
                                "pack the corpus again")
            data = data.mean(axis=1)
            return {r["ID"]: data[int(r["start"]):int(r["stop"])] for r in members}
        return {r["ID"]: load_audio(path)[0].numpy() for r in members}

    audio = {}
    with ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
        for part in pool.map(decode, by_file.items()):
            audio.update(part)
    return audio


def main(argv=None):
    """``python -m cald_speech.data.pack``: packs manifests' audio into Opus shards."""
    p = argparse.ArgumentParser(prog="python -m cald_speech.data.pack",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="pack folder to write")
    p.add_argument("manifests", nargs="+", help="CSV manifests (ID, duration, wav, ...)")
    p.add_argument("--shards", type=int, default=16, help="number of Opus files")
    p.add_argument("--kbps", type=float, default=16.0, help="Opus bit rate, kbit/s")
    p.add_argument("--jobs", type=int, default=None, help="threads (default: all cores)")
    args, status = parse(add_version(p), argv)
    if args is None:
        return status
    try:
        s = pack_manifests(args.manifests, args.out, args.shards, args.kbps, args.jobs)
    except CaldError as exc:
        return fail(p.prog, exc)
    print(f"packed {s['recordings']} recordings ({s['hours']} h) into {s['shards']} shards, "
          f"{s['bytes'] / 2**20:.1f} MiB at {s['kbps']} kbit/s: {', '.join(s['manifests'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
