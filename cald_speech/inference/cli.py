"""The ``cald-transcribe`` command: transcribe (or classify) audio files from the shell.

``cald-transcribe FILE... --model DIR [--format txt|json|srt] [--window-s S]
[--output-dir D]``; an intent model folder is served by :class:`Classifier` instead of
:class:`Transcriber` (see :func:`main`).
"""

import argparse
import json
import sys
from pathlib import Path

from cald_speech.allocator import tune_allocator
from cald_speech.cli import EXIT_FAILED, EXIT_OK, add_version, exit_status, fail, parse
from cald_speech.decoding import add_decoding_options, decoding_kwargs
from cald_speech.errors import CaldError, ConfigError
from cald_speech.inference.classifier import Classifier
from cald_speech.inference.cnn_blocks import DEFAULT_NORM_WINDOW_S
from cald_speech.inference.formats import FORMATS
from cald_speech.inference.long_form import DEFAULT_PROJECTION_CACHE_MB
from cald_speech.inference.precision import PRECISIONS
from cald_speech.inference.transcriber import MODES, Transcriber
from cald_speech.inference.windows import DEFAULT_OVERLAP_S, DEFAULT_WINDOW_S

PROG = "cald-transcribe"


def build_parser():
    """The ``cald-transcribe`` argument parser."""
    p = argparse.ArgumentParser(
        prog="cald-transcribe",
        description=(
            "Transcribe audio files of any length, format, rate and channel count with a "
            "packaged cald-speech model (student or teacher). Students whose layers are all "
            "linear-time mixers read a whole file in one pass; other models read it in "
            "overlapping windows. Exit status: 0 when every file was transcribed, 1 when "
            "some file (or the model) failed, 2 for a usage error."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model folder (config.json, weights, and tokenizer.json or a hub "
                        "checkpoint's vocab.json + tokenizer_config.json), or a hub id in the "
                        "local Hugging Face cache (e.g. facebook/wav2vec2-base-960h)")
    p.add_argument("--format", default="txt", choices=FORMATS,
                   help="txt (text), json (words with start/end/confidence) or srt subtitles")
    p.add_argument("--output-dir", metavar="D", default=None,
                   help="write <name>.<format> per file here (default: print to stdout)")
    p.add_argument("--window-s", type=float, default=DEFAULT_WINDOW_S, metavar="S",
                   help=f"window length in seconds for windowed models (default "
                        f"{DEFAULT_WINDOW_S:g})")
    p.add_argument("--overlap-s", type=float, default=DEFAULT_OVERLAP_S, metavar="S",
                   help=f"context in seconds on each side of a window (default "
                        f"{DEFAULT_OVERLAP_S:g})")
    p.add_argument("--norm-window-s", type=float, default=DEFAULT_NORM_WINDOW_S, metavar="S",
                   help="one-pass mode, group-norm CNN: normalise each stretch of audio with "
                        f"the statistics of the S seconds around it (default "
                        f"{DEFAULT_NORM_WINDOW_S:g}; 0: the whole file)")
    p.add_argument("--projection-cache-mb", type=float, default=DEFAULT_PROJECTION_CACHE_MB,
                   metavar="MB",
                   help="one-pass mode, shared-projection student: memory for input "
                        "projections reused by the backward scan (default "
                        f"{DEFAULT_PROJECTION_CACHE_MB:g}; 0: recompute them, slower)")
    p.add_argument("--mode", default="auto", choices=MODES,
                   help="auto: one-pass for linear students, windows for the rest")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default), or bf16: matrix products in bfloat16, faster on "
                        "CPUs with native bfloat16 (AVX512-BF16, AMX) and on GPUs")
    p.add_argument("--no-timestamps", action="store_true", help="skip the word alignment")
    add_decoding_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return add_version(p)


def _output_name(path, fmt, used):
    stem = Path(path).stem or "audio"
    name = f"{stem}.{fmt}"
    k = 1
    while name in used:
        k += 1
        name = f"{stem}-{k}.{fmt}"
    used.add(name)
    return name


def _intent_line(r):
    conf = min(r["confidence"].values()) if r.get("confidence") else float("nan")
    return f"{r['intent']}\t{r['scenario']}\t{r['action']}\t{conf:.3f}"


def _status(failed, total):
    """The exit status of a run over ``total`` files of which ``failed`` failed."""
    if failed:
        print(f"{PROG}: {failed} of {total} file(s) failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _classify_main(args):
    """``cald-transcribe`` with an intent model: one label line (or JSON) per file."""
    if args.format == "srt":
        return fail(PROG, ConfigError("--format srt needs a CTC model; intent models give "
                                      "txt or json"))
    try:
        clf = Classifier.from_pretrained(args.model, device=args.device)
    except CaldError as exc:
        print(f"{PROG}: error: cannot load the model: {exc}", file=sys.stderr)
        return exit_status(exc)
    failed = 0
    for r in clf.classify_batch(args.files, errors="skip"):
        if "error" in r:
            print(f"{PROG}: error: {r['error']}", file=sys.stderr)
            failed += 1
        elif args.format == "json":
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(f"{r['path']}\t{_intent_line(r)}\n")
    sys.stdout.flush()
    return _status(failed, len(args.files))


def main(argv=None):
    """Entry point of ``cald-transcribe``; returns the exit status.

    With an intent model folder (the SLURP recipe's ``model/``) each file gets a line
    ``FILE<TAB>intent<TAB>scenario<TAB>action<TAB>confidence`` (txt) or a JSON object.

    Every file is tried; a bad one prints ``cald-transcribe: error: <file>: <problem>
    (fix: ...)`` on stderr and the others go on. Exit status (:mod:`cald_speech.cli`):
    0 when every file was transcribed, 1 when some file (or the model) failed, 2 for a
    usage error (including a device that cannot be used).

    Without ``--output-dir`` the results go to stdout: for one file, the formatted
    result alone; for several, ``FILE<TAB>text`` lines (txt), one JSON object per line
    (json) or ``==> FILE <==`` headed blocks (srt).

    Example
    -------
    >>> main(["--help"])  # doctest: +ELLIPSIS
    usage: cald-transcribe ...
    0
    """
    args, status = parse(build_parser(), argv)
    if args is None:
        return status
    try:
        tune_allocator()
    except ConfigError as exc:
        return fail("cald-transcribe", exc)
    if args.output_dir:
        out = Path(args.output_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file of that name, or no permission
            problem = "is a file, not a folder" if out.is_file() else f"cannot be created ({exc})"
            return fail(PROG, ConfigError(f"--output-dir {out} {problem}; fix: name a "
                                          "folder"))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' own "Loading weights" bar
    from cald_speech.tasks.intent.model import is_intent_model

    if is_intent_model(args.model):
        return _classify_main(args)
    try:
        decoding = decoding_kwargs(args)
    except ConfigError as exc:
        return fail(PROG, exc)
    try:
        asr = Transcriber.from_pretrained(args.model, device=args.device,
                                          window_s=args.window_s, overlap_s=args.overlap_s,
                                          norm_window_s=args.norm_window_s,
                                          projection_cache_mb=args.projection_cache_mb,
                                          precision=args.precision, **decoding)
    except CaldError as exc:
        what = "the language model" if args.lm and str(args.lm) in str(exc) else "the model"
        print(f"{PROG}: error: cannot load {what}: {exc}", file=sys.stderr)
        return exit_status(exc)
    files = args.files
    out_dir = Path(args.output_dir) if args.output_dir else None
    used = set()
    failed = 0
    many = len(files) > 1
    for path in files:
        try:
            result = asr.transcribe_file(
                path, mode=args.mode, timestamps=not args.no_timestamps,
                progress=False if args.no_progress else None,
            )
        except CaldError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        text = result.format(args.format)
        if out_dir is not None:
            target = out_dir / _output_name(path, args.format, used)
            try:
                target.write_text(text, encoding="utf-8")
            except OSError as exc:
                print(f"{PROG}: error: {target}: cannot write ({exc})", file=sys.stderr)
                failed += 1
                continue
            print(f"{path} -> {target}", file=sys.stderr)
        elif not many:
            sys.stdout.write(text)
        elif args.format == "txt":
            sys.stdout.write(f"{path}\t{result.text}\n")
        elif args.format == "json":
            sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(f"==> {path} <==\n{text}\n")
        sys.stdout.flush()
    return _status(failed, len(files))
