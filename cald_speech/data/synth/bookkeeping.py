"""The files that record how a synthetic corpus was made, and its summary.

``metadata.json`` holds the options (written before any audio, so that an interrupted
run resumes and a re-run with the same options does nothing), then the summary and the
voices of each split; ``utterances.tsv`` lists every audio file with its split, speaker,
voice and augmentation; ``README.md`` states the evaluation protocol. :func:`format_summary`
prints a corpus summary as a table.
"""

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

from cald_speech import __version__
from cald_speech.data.voices import SAMPLE_RATE
from cald_speech.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Name of the file that records how a corpus was made (and makes re-runs idempotent).
METADATA_FILE = "metadata.json"
#: Name of the table of every audio file: split, speaker, voice, rate, pitch, augmentation.
UTTERANCES_FILE = "utterances.tsv"
#: Version of the corpus format written here.
FORMAT_VERSION = 1


def _read_metadata(root):
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot be read ({exc})",
                        "delete the corpus folder and synthesize it again") from None


def _write_text_atomic(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _prepare_root(root, kind, options, owned, overwrite):
    """Checks what ``root`` holds; returns the finished summary when up to date."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} is a file, not a folder; choose a folder for the corpus")
    meta = _read_metadata(root)
    if meta is None:
        present = [p for p in owned if (root / p).is_dir() and any((root / p).iterdir())]
        present += [p for p in owned if (root / p).is_file()]
        if present:
            raise ConfigError(
                f"{root} already holds {', '.join(map(str, present))} not made by cald-synth "
                "(no metadata.json); choose an empty folder"
            )
        return None
    if meta.get("corpus") != kind:
        raise ConfigError(
            f"{root} holds a {meta.get('corpus')!r} corpus, not {kind!r}; choose another folder"
        )
    if meta.get("options") != options:
        if not overwrite:
            old = meta.get("options") or {}
            diff = sorted(k for k in set(old) | set(options) if old.get(k) != options.get(k))
            raise ConfigError(
                f"{root} holds a {kind} corpus made with other options (differing: "
                f"{', '.join(diff)}); pass overwrite=True (--overwrite) to replace it, or "
                "choose another folder"
            )
        logger.warning("%s: replacing the corpus made with other options", root)
        for p in owned:
            shutil.rmtree(root / p, ignore_errors=True)
        for name in (METADATA_FILE, "README.md", UTTERANCES_FILE):
            (root / name).unlink(missing_ok=True)
        return None
    on_disk = sum(len(list((root / p).rglob("*.flac"))) for p in owned if (root / p).is_dir())
    if meta.get("complete"):
        summary = dict(meta["summary"])
        expected = sum(s["utterances"] for s in summary["splits"].values())
        if on_disk == expected:
            summary["up_to_date"] = True
            logger.info("%s: corpus up to date, nothing to do", root)
            return summary
        logger.warning("%s: %d audio files found, %d expected; completing the corpus",
                       root, on_disk, expected)
    else:
        logger.info("%s: resuming an unfinished corpus (%d audio files kept)", root, on_disk)
    for p in owned:
        for part in (root / p).rglob("*.part") if (root / p).is_dir() else ():
            part.unlink()
    return None


def _start(root, kind, options):
    """Records the options before any audio is written, so that a re-run can resume."""
    meta = {"corpus": kind, "format_version": FORMAT_VERSION, "complete": False,
            "options": options}
    _write_text_atomic(Path(root) / METADATA_FILE, json.dumps(meta, indent=2) + "\n")


def _write_utterance_table(root, jobs_list, voice_of):
    """``utterances.tsv``: every audio file with its split, speaker, voice and augmentation."""
    rows = ["file\tsplit\tspeaker\tvoice\tsource_id\trate\tpitch\treverb\tsnr_db\t"
            "telephone\tpeak_db"]
    for job in jobs_list:
        for out in job["outputs"]:
            aug, voice = out["aug"], voice_of[out["path"]]
            noise = aug.get("noise")
            rows.append("\t".join(str(x) for x in (
                os.path.relpath(out["path"], root), job["split"], voice.speaker, voice.name,
                job["sentence_id"], job["rate"], job["shift"],
                aug["reverb"] + 1 if "reverb" in aug else 0,
                noise[2] if noise else "-", int(bool(aug.get("telephone"))), aug["peak_db"],
            )))
    _write_text_atomic(Path(root) / UTTERANCES_FILE, "\n".join(rows) + "\n")


def _voice_table(voices):
    return {str(v.speaker): {**v.to_dict(), "description": v.describe()} for v in voices}


_HELDOUT_STATEMENT = (
    "Held-out-voice evaluation: the speakers (voice identities) of the {heldout} split(s) "
    "never occur in the {train} split, and no sentence of the {heldout} split(s) occurs in "
    "the {train} split (sentences are compared after normalisation). Dev and test share "
    "neither speakers nor sentences either. Sentences of the evaluation-only text files "
    "({eval}) are never in the {train} or {dev} split{eval_test}. A held-out identity may "
    "be built on the same engine voice as a training identity, with different fixed "
    "pitch/formant, tempo and tilt offsets (see the voice table)."
)


def _statement(splits, eval_file, eval_texts):
    train, dev, test = splits
    return _HELDOUT_STATEMENT.format(
        heldout=" and ".join(s for s in (dev, test) if s), train=train, dev=dev,
        eval=eval_file or "none given",
        eval_test=f"; the {test} split is built from them" if eval_texts else "",
    )


def _write_readme(root, summary, voices_by_split, extra_lines=()):
    kind = summary["corpus"]
    title = {"librispeech": "LibriSpeech", "slurp": "SLURP"}[kind]
    lines = [
        f"# Synthetic {title}-format corpus",
        "",
        f"Made by `cald-synth {kind}` (cald-speech {__version__}) with seed "
        f"{summary['seed']}: text-to-speech voices (espeak-ng, flite, festival) with per-"
        "utterance rate and pitch, noise, reverberation and telephone-channel augmentation. "
        "16 kHz mono FLAC. Not real speech.",
        "",
        "## Evaluation protocol",
        "",
        summary["heldout_statement"],
        "",
        "## Splits",
        "",
        "| split | " + ("records | " if kind == "slurp" else "") + "files | hours | speakers |",
        "|---|" + ("---|" if kind == "slurp" else "") + "---|---|---|",
    ]
    for split, s in summary["splits"].items():
        rec = f"{s['records']} | " if kind == "slurp" else ""
        lines.append(f"| {split} | {rec}{s['utterances']} | {s['hours']:.3f} | "
                     f"{len(s['speakers'])} |")
    lines += ["", "## Voices per split", ""]
    for split, voices in voices_by_split.items():
        if split not in summary["splits"]:
            continue
        lines += [f"### {split}", "", "| speaker | identity | engine voice and offsets |",
                  "|---|---|---|"]
        lines += [f"| {v.speaker} | {v.name} | {v.describe()} |" for v in voices]
        lines.append("")
    lines += [
        "## Files",
        "",
        f"`{UTTERANCES_FILE}` lists every audio file with its split, speaker id, voice "
        "identity, source sentence id, speaking-rate factor, pitch shift (semitones), room "
        "impulse response (0: none), SNR in dB (-: no noise), telephone channel (1/0) and "
        "peak level (dBFS). `metadata.json` holds this summary and the options.",
        "",
        *extra_lines,
    ]
    lines += ["## Options", "", "```json", json.dumps(summary["options"], indent=2), "```", ""]
    _write_text_atomic(Path(root) / "README.md", "\n".join(lines))


def _finish(root, kind, options, summary, voices_by_split, extra_lines=()):
    meta = {
        "corpus": kind,
        "format_version": FORMAT_VERSION,
        "made_by": f"cald-speech {__version__}",
        "complete": True,
        "options": options,
        "summary": summary,
        "voices": {split: _voice_table(v) for split, v in voices_by_split.items()
                   if split in summary["splits"]},
    }
    _write_readme(root, summary, voices_by_split, extra_lines)
    _write_text_atomic(Path(root) / METADATA_FILE, json.dumps(meta, indent=2) + "\n")
    summary = dict(summary)
    summary["up_to_date"] = False
    return summary


def _split_summary(paths, frames, voices_of_path):
    speakers = sorted({voices_of_path[p].speaker for p in paths})
    names = sorted({voices_of_path[p].name for p in paths})
    engines = Counter(voices_of_path[p].engine for p in paths)
    return {
        "utterances": len(paths),
        "hours": round(sum(frames[p] for p in paths) / SAMPLE_RATE / 3600.0, 5),
        "speakers": speakers,
        "voices": names,
        "engines": dict(sorted(engines.items())),
    }


def format_summary(summary):
    """A table of the splits of a corpus summary: files, hours, speakers, engines.

    Example
    -------
    >>> print(format_summary({"corpus": "librispeech", "root": "/c", "seed": 1,
    ...     "splits": {"dev-clean": {"utterances": 3, "hours": 0.002, "speakers": [7, 9],
    ...                              "engines": {"flite": 3}}}}))
    librispeech corpus in /c (seed 1)
      split            files    hours  speakers  engines
      dev-clean            3    0.002         2  flite 3
      total                3    0.002         2
    """
    lines = [f"{summary['corpus']} corpus in {summary['root']} (seed {summary['seed']})",
             f"  {'split':<15}{'files':>6}{'hours':>9}{'speakers':>10}  engines"]
    total_n, total_h, speakers = 0, 0.0, set()
    for split, s in summary["splits"].items():
        engines = ", ".join(f"{e} {n}" for e, n in s.get("engines", {}).items())
        lines.append(f"  {split:<15}{s['utterances']:>6}{s['hours']:>9.3f}"
                     f"{len(s['speakers']):>10}  {engines}")
        total_n += s["utterances"]
        total_h += s["hours"]
        speakers |= set(s["speakers"])
    lines.append(f"  {'total':<15}{total_n:>6}{total_h:>9.3f}{len(speakers):>10}")
    return "\n".join(lines)
