"""The ``cald-transcribe`` command: transcribe (or classify) audio files from the shell.

``cald-transcribe FILE... --model DIR [--format txt|json|srt] [--window-s S]
[--output-dir D]``; an intent model folder is served by :class:`Classifier` instead of
:class:`Transcriber` (see :func:`main`). The parser and the checks of the options need no
model code: ``--help`` and usage errors answer at once.
"""

import json
import sys
from pathlib import Path

from cald_speech.cli import (
    EXIT_FAILED,
    EXIT_OK,
    add_verbose,
    exit_status,
    fail,
    make_parser,
    parse,
)
from cald_speech.decoding import add_decoding_options, decoding_kwargs
from cald_speech.errors import CaldError, ConfigError
from cald_speech.inference.settings import (
    DEFAULT_NORM_WINDOW_S,
    DEFAULT_OVERLAP_S,
    DEFAULT_PROJECTION_CACHE_MB,
    DEFAULT_WINDOW_S,
    FORMATS,
    MODES,
    PRECISIONS,
)

PROG = "cald-transcribe"

#: What goes where, for any number of files (stated in ``--help``).
OUTPUT_RULE = (
    "Output, the same for one file or many: without --output-dir, stdout gets one record "
    "per file, in the order given: txt, a line FILE<TAB>TEXT; json, one JSON object per "
    "line (JSON Lines; the file in \"path\"); srt, a line '==> FILE <==' and then the "
    "file's subtitles. With --output-dir D, each file gets D/<name>.<format>: the text, "
    "a JSON document or an SRT file. Intent models give FILE<TAB>intent<TAB>scenario<TAB>"
    "action<TAB>confidence (txt) or JSON the same way. Exit status: 0 when every file "
    "was transcribed, 1 when some file (or the model) failed, 2 for a usage error."
)


def build_parser():
    """The ``cald-transcribe`` argument parser."""
    p = make_parser(
        PROG,
        "Transcribe audio files of any length, format, rate and channel count with a "
        "packaged cald-speech model (student or teacher). Students whose layers are all "
        "linear-time mixers read a whole file in one pass; other models read it in "
        "overlapping windows.",
        epilog=OUTPUT_RULE,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model folder (config.json, weights, and tokenizer.json or a hub "
                        "checkpoint's vocab.json + tokenizer_config.json), or a hub id in the "
                        "local Hugging Face cache (e.g. facebook/wav2vec2-base-960h)")
    p.add_argument("--format", default="txt", choices=FORMATS,
                   help="txt (text), json (words with start/end/confidence) or srt "
                        "subtitles (srt needs the word timings: not with --no-timestamps)")
    p.add_argument("--output-dir", metavar="DIR", default=None,
                   help="write <name>.<format> per file here (default: stdout, see below)")
    p.add_argument("--window-s", type=float, default=DEFAULT_WINDOW_S, metavar="S",
                   help="window length in seconds for windowed models; longer than twice "
                        "--overlap-s")
    p.add_argument("--overlap-s", type=float, default=DEFAULT_OVERLAP_S, metavar="S",
                   help="context in seconds on each side of a window")
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
                   help="fp32, or bf16: matrix products in bfloat16, faster on "
                        "CPUs with native bfloat16 (AVX512-BF16, AMX) and on GPUs")
    p.add_argument("--no-timestamps", action="store_true",
                   help="skip the word alignment (txt and json only)")
    add_decoding_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return add_verbose(p)


def check_options(args):
    """Raises ConfigError for options that cannot work together (before any model loads).

    Example
    -------
    >>> args = build_parser().parse_args(["a.wav", "--model", "m", "--window-s", "1"])
    >>> check_options(args)
    Traceback (most recent call last):
      ...
    cald_speech.errors.ConfigError: --window-s 1 must be longer than twice --overlap-s 2 (fix: ...)
    """
    if args.format == "srt" and args.no_timestamps:
        raise ConfigError("--format srt needs the word timings, which --no-timestamps skips "
                          "(fix: leave out --no-timestamps, or use --format txt or json)")
    if args.window_s <= 0:
        raise ConfigError(f"--window-s must be positive, got {args.window_s:g}")
    if args.overlap_s < 0:
        raise ConfigError(f"--overlap-s must be >= 0, got {args.overlap_s:g}")
    if args.window_s <= 2 * args.overlap_s:
        raise ConfigError(
            f"--window-s {args.window_s:g} must be longer than twice --overlap-s "
            f"{args.overlap_s:g} (fix: --window-s {2 * args.overlap_s + 1:g} or more, or a "
            "smaller --overlap-s)")
    for name in ("norm_window_s", "projection_cache_mb"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got "
                              f"{getattr(args, name):g}")
    return decoding_kwargs(args)


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


class _Writer:
    """Writes each file's result by :data:`OUTPUT_RULE`; returns False where it failed."""

    def __init__(self, fmt, out_dir):
        self.fmt, self.out_dir, self.used = fmt, out_dir, set()

    def __call__(self, path, file_text, record_line):
        if self.out_dir is not None:
            target = self.out_dir / _output_name(path, self.fmt, self.used)
            try:
                target.write_text(file_text, encoding="utf-8")
            except OSError as exc:
                print(f"{PROG}: error: {target}: cannot write ({exc})", file=sys.stderr)
                return False
            print(f"{path} -> {target}", file=sys.stderr)
        else:
            sys.stdout.write(record_line)
            sys.stdout.flush()
        return True


def _classify_main(args, write):
    """``cald-transcribe`` with an intent model: one label line (or JSON) per file."""
    from cald_speech.inference.classifier import Classifier

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
            continue
        if args.format == "json":
            line = json.dumps(r, ensure_ascii=False) + "\n"
            text = json.dumps(r, indent=2, ensure_ascii=False) + "\n"
        else:
            line = f"{r['path']}\t{_intent_line(r)}\n"
            text = _intent_line(r) + "\n"
        failed += not write(r["path"], text, line)
    return _status(failed, len(args.files))


def _record(path, result, fmt):
    """The stdout record of one file (:data:`OUTPUT_RULE`)."""
    if fmt == "txt":
        return f"{path}\t{result.text}\n"
    if fmt == "json":
        return json.dumps(result.to_dict(), ensure_ascii=False) + "\n"
    return f"==> {path} <==\n{result.format('srt')}\n"


def main(argv=None):
    """Entry point of ``cald-transcribe``; returns the exit status.

    Every file is tried; a bad one prints ``cald-transcribe: error: <file>: <problem>
    (fix: ...)`` on stderr and the others go on. Where the results go is the same for
    any number of files (:data:`OUTPUT_RULE`). Exit status (:mod:`cald_speech.cli`): 0
    when every file was transcribed, 1 when some file (or the model) failed, 2 for a
    usage error (including options that cannot work together, or a device that cannot
    be used).

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
        decoding = check_options(args)
    except ConfigError as exc:
        return fail(PROG, exc)
    from cald_speech.allocator import tune_allocator

    try:
        tune_allocator()
    except ConfigError as exc:
        return fail(PROG, exc)
    out_dir = None
    if args.output_dir:
        out_dir = Path(args.output_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file of that name, or no permission
            problem = ("is a file, not a folder" if out_dir.is_file()
                       else f"cannot be created ({exc})")
            return fail(PROG, ConfigError(f"--output-dir {out_dir} {problem}; fix: name a "
                                          "folder"))
    write = _Writer(args.format, out_dir)
    from cald_speech.inference.transcriber import Transcriber
    from cald_speech.tasks.intent.model import is_intent_model

    if is_intent_model(args.model):
        return _classify_main(args, write)
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
    failed = 0
    for path in args.files:
        try:
            result = asr.transcribe_file(
                path, mode=args.mode, timestamps=not args.no_timestamps,
                progress=False if args.no_progress else None,
            )
        except CaldError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        failed += not write(path, result.format(args.format),
                            _record(path, result, args.format))
    return _status(failed, len(args.files))
