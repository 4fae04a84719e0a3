"""Long-form accuracy and cost: one long recording, windowed teacher vs one-pass student.

``cald-bench longform --teacher DIR --student DIR --csv test.csv [--minutes M]`` builds
one long recording by concatenating the manifest's utterances (16 kHz mono, ``--gap-s``
of silence between them, cycling through the list until ``--minutes`` are reached;
all of them once by default) with its known text, writes it (``longform.wav``,
``longform_reference.txt``, ``longform_segments.json``), then transcribes it

- with the teacher in windows (``--window-s`` 30 s, ``--overlap-s`` 2 s on each side,
  posteriors stitched),
- with the student in one pass,
- optionally (``--teacher-onepass``) with the teacher in one pass,

each in a fresh process (time and peak memory as in :mod:`cald_speech.bench.speed`),
and reports each system's WER/CER against the known text, the student's agreement with
the windowed teacher, time, real-time factor and peak memory (table + ``longform.json``).

Example
-------
>>> import os, tempfile, numpy as np, soundfile as sf
>>> d = tempfile.mkdtemp()
>>> for i in range(2):
...     sf.write(os.path.join(d, f"u{i}.wav"), np.full(1600, 0.1, "float32"), 16000)
>>> items = [{"ID": f"u{i}", "wav": os.path.join(d, f"u{i}.wav"), "ref": f"WORD{i}"}
...          for i in range(2)]
>>> rec = build_recording(items, os.path.join(d, "long.wav"), gap_s=0.05, minutes=0.01)
>>> rec["text"], round(rec["duration"], 2)
('WORD0 WORD1 WORD0 WORD1 WORD0', 0.7)
"""

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from cald_speech.bench.options import longform_parser as build_parser
from cald_speech.bench.report import (
    format_table,
    machine_info,
    run_child,
    write_json,
)
from cald_speech.bench.wer import error_rates, read_items
from cald_speech.cli import fail, parse
from cald_speech.data.audio import SAMPLE_RATE, load_audio
from cald_speech.decoding import decoding_kwargs
from cald_speech.errors import AudioError, CaldError, DataError
from cald_speech.hub import resolve_model_source

__all__ = ["build_recording", "main"]

SYSTEMS = {
    "teacher-windowed": ("teacher", "windowed"),
    "student-onepass": ("student", "one-pass"),
    "teacher-onepass": ("teacher", "one-pass"),
}


def build_recording(items, path, gap_s=0.5, minutes=None, skipped=None):
    """Concatenates utterances into one 16 kHz file with the matching reference text.

    Arguments
    ---------
    items : list of dict
        ``{"ID", "wav", "ref"}`` (see :func:`cald_speech.bench.wer.read_items`).
    path : str or os.PathLike
        Output audio file (float WAV).
    gap_s : float
        Silence between utterances.
    minutes : float, optional
        Cycle through the items until the recording is at least this long (default:
        each item once).
    skipped : dict, optional
        Receives ``ID -> error`` for unreadable items (left out).

    Returns
    -------
    dict
        ``path``, ``text``, ``duration`` (s), ``segments`` (``ID``, ``start``, ``end``,
        ``text``), ``passes`` (times through the list).
    """
    skipped = {} if skipped is None else skipped
    gap = np.zeros(int(round(gap_s * SAMPLE_RATE)), dtype=np.float32)
    target = None if minutes is None else minutes * 60 * SAMPLE_RATE
    texts, segments, n, passes = [], [], 0, 0
    with sf.SoundFile(str(path), "w", samplerate=SAMPLE_RATE, channels=1,
                      subtype="FLOAT", format="WAV") as out:
        while True:
            passes += 1
            wrote = False
            for it in items:
                if it["ID"] in skipped:
                    continue
                try:
                    wav, _ = load_audio(it["wav"])
                except AudioError as exc:
                    skipped[it["ID"]] = str(exc)
                    continue
                if n:
                    out.write(gap)
                    n += gap.size
                out.write(wav.numpy())
                segments.append({"ID": it["ID"], "start": n / SAMPLE_RATE,
                                 "end": (n + wav.numel()) / SAMPLE_RATE, "text": it["ref"]})
                n += wav.numel()
                texts.append(it["ref"])
                wrote = True
                if target is not None and n >= target:
                    break
            if not wrote:
                raise DataError(path, "no readable utterance to build the recording from",
                                "check the manifest's audio paths")
            if target is None or n >= target:
                break
    text = " ".join(t for t in texts if t)
    return {"path": str(path), "text": text, "duration": n / SAMPLE_RATE,
            "segments": segments, "passes": passes}


def main(argv=None):
    """Entry point of ``cald-bench longform``; returns the exit status (:mod:`cald_speech.cli`)."""
    args, status = parse(build_parser(), argv)
    return status if args is None else command(args)


def command(args):
    """``cald-bench longform`` on parsed arguments (:func:`build_parser`)."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    skipped = {}
    try:
        decoding = decoding_kwargs(args)
        folders = {"teacher": resolve_model_source(args.teacher, "teacher"),
                   "student": resolve_model_source(args.student, "student")}
        items = read_items(args.csv, args.text_column, args.data_root, None, args.normalize)
        rec = build_recording(items, out / "longform.wav", args.gap_s, args.minutes, skipped)
    except CaldError as exc:
        return fail("cald-bench longform", exc)
    for item_id, msg in skipped.items():
        print(f"cald-bench longform: skipped {item_id}: {msg}", file=sys.stderr)
    (out / "longform_reference.txt").write_text(rec["text"] + "\n", encoding="utf-8")
    write_json(out / "longform_segments.json", rec["segments"])
    print(f"recording: {rec['duration'] / 60:.2f} min, {len(rec['segments'])} utterances, "
          f"{len(rec['text'].split())} words -> {rec['path']}")
    systems = ["teacher-windowed", "student-onepass"]
    if args.teacher_onepass:
        systems.append("teacher-onepass")
    results = []
    for system in systems:
        role, mode = SYSTEMS[system]
        cfg = dict(model=str(folders[role]),
                   system=system, mode=mode, audio=rec["path"], window_s=args.window_s,
                   overlap_s=args.overlap_s, norm_window_s=args.norm_window_s,
                   device=args.device, threads=args.threads, return_text=True,
                   decoding=decoding)
        print(f"running {system} ...", file=sys.stderr)
        if args.in_process:
            from cald_speech.bench.speed import run_config

            results.append(run_config(cfg))
        else:
            results.append(run_child("cald_speech.bench.speed", cfg, args.timeout))
    ref = rec["text"]
    windowed = next((r for r in results if r["system"] == "teacher-windowed"
                     and r["status"] == "ok"), None)
    rows = []
    for r in results:
        if r["status"] != "ok":
            rows.append(dict(system=r["system"], note=f"{r['status']}: {r.get('reason', '')}"))
            continue
        hyp = " ".join(r["text"].upper().split())
        r["scores"] = error_rates([ref], [hyp])
        if windowed is not None and r is not windowed:
            wt = " ".join(windowed["text"].upper().split())
            r["agreement_with_teacher_windowed"] = error_rates([wt], [hyp])
        agree = r.get("agreement_with_teacher_windowed", {}).get("wer")
        rows.append(dict(system=r["system"], wer=100 * r["scores"]["wer"],
                         cer=100 * r["scores"]["cer"],
                         agree=None if agree is None else 100 * agree, time=r["time_s"],
                         rtf=r["rtf"], peak=r["peak_rss_mb"], cuda=r.get("cuda_peak_mb"),
                         note="ok"))
    cols = [("system", "system", "s"), ("wer", "WER %", ".2f"), ("cer", "CER %", ".2f"),
            ("agree", "agreement with teacher-windowed, WER %", ".2f"),
            ("time", "time s", ".1f"),
            ("rtf", "RTF", ".3f"), ("peak", "peak RSS MB", ".0f"), ("cuda", "CUDA MB", ".0f"),
            ("note", "status", "s")]
    print(format_table(rows, cols))
    payload = dict(recording={k: v for k, v in rec.items() if k != "segments"},
                   skipped=skipped, results=results, machine=machine_info(),
                   options={k: v for k, v in vars(args).items()})
    print(f"wrote {write_json(out / 'longform.json', payload)}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
