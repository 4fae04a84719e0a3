"""The ``cald-synth`` command line (also ``python -m cald_speech.data.synth``).

Subcommands: ``librispeech`` and ``slurp`` synthesize a corpus
(:func:`~cald_speech.data.synth.corpora.synthesize_librispeech`,
:func:`~cald_speech.data.synth.corpora.synthesize_slurp`) and print its summary;
``voices`` lists the voice identities.

Example
-------
>>> args, _ = parse(build_parser(), ["librispeech", "--output-dir", "out", "--train", "4",
...                                  "--engines", "flite", "espeak"])
>>> args.train, args.dev, _options_from_args(args)["engines"]
(4, 100, 'flite,espeak')
"""

import argparse
import logging
import sys
import time

from cald_speech.cli import (
    EXIT_FAILED,
    HelpFormatter,
    ListAction,
    deprecated_positional,
    fail,
    make_parser,
    parse,
)
from cald_speech.data.synth.options import LIBRISPEECH_SPLITS, SynthOptions
from cald_speech.errors import CaldError


def _train_count(value):
    """``--train``: a number of utterances or ``all``.

    Example
    -------
    >>> _train_count("12"), _train_count("all")
    (12, 'all')
    """
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number or 'all'") from None


def _common_arguments(p, n_train, n_dev, n_test):
    d = SynthOptions()
    p.add_argument("--output-dir", metavar="DIR", default=None,
                   help="corpus folder (required)")
    deprecated_positional(p, "out", "--output-dir")
    p.add_argument("--train", type=_train_count, default=n_train,
                   help="train size, or 'all': every usable sentence left after dev and test")
    p.add_argument("--dev", type=int, default=n_dev, help="dev size (0: no dev split)")
    p.add_argument("--test", type=int, default=n_test, help="test size (0: no test split)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every random choice")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes (the output does not depend on it)")
    p.add_argument("--voices", action=ListAction, default=None, metavar="VOICE",
                   help="identities, engine:voice or engines (default: all installed; see "
                        "`cald-synth voices`)")
    p.add_argument("--engines", action=ListAction, default=None, metavar="ENGINE",
                   help="engines to use, e.g. --engines espeak flite festival (default: "
                        "all installed)")
    p.add_argument("--dev-voices", type=int, default=d.dev_voices,
                   help="identities held out for the dev split")
    p.add_argument("--test-voices", type=int, default=d.test_voices,
                   help="identities held out for the test split")
    p.add_argument("--eval-texts", action="store_true",
                   help="build the test split from the evaluation-only sentences")
    p.add_argument("--data-dir", default=None,
                   help="shared data folder with text/, eval/text/ and noise/ (default: "
                        "$CALD_SPEECH_DATA or ../shared/data)")
    p.add_argument("--noise-dir", default=None,
                   help="folder with noise*.wav and rir/rir*.wav (default: DATA_DIR/noise)")
    p.add_argument("--noise-prob", type=float, default=d.noise_prob,
                   help="share of files with additive noise")
    p.add_argument("--snr", type=float, nargs=2, default=d.snr_db, metavar=("LOW", "HIGH"),
                   help="SNR range in dB")
    p.add_argument("--reverb-prob", type=float, default=d.reverb_prob,
                   help="share of files with room reverberation (SLURP: never for headset "
                        "files, always for far-field twins)")
    p.add_argument("--telephone-prob", type=float, default=d.telephone_prob,
                   help="share of files through a telephone channel")
    p.add_argument("--rate", type=float, nargs=2, default=d.rate, metavar=("LOW", "HIGH"),
                   help="speaking-rate factor range")
    p.add_argument("--pitch", type=float, nargs=2, default=d.pitch, metavar=("LOW", "HIGH"),
                   help="pitch shift range in semitones")
    p.add_argument("--min-words", type=int, default=d.min_words,
                   help="drop shorter sentences")
    p.add_argument("--max-words", type=int, default=d.max_words,
                   help="drop longer sentences")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help="drop sentences estimated to last longer")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a corpus made with other options")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _joined(values):
    return None if values is None else ",".join(values)


def _options_from_args(args):
    return {
        "seed": args.seed, "voices": _joined(args.voices), "engines": _joined(args.engines),
        "dev_voices": args.dev_voices, "test_voices": args.test_voices,
        "eval_texts": args.eval_texts, "noise_prob": args.noise_prob,
        "snr_db": tuple(args.snr), "reverb_prob": args.reverb_prob,
        "telephone_prob": args.telephone_prob, "rate": tuple(args.rate),
        "pitch": tuple(args.pitch), "min_words": args.min_words, "max_words": args.max_words,
        "max_seconds": args.max_seconds,
    }


def build_parser():
    """The ``cald-synth`` argument parser."""
    parser = make_parser(
        "cald-synth",
        "Synthesize offline speech corpora in the real LibriSpeech and SLURP "
        "layouts (held-out voices and sentences for dev/test).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = {"formatter_class": HelpFormatter}
    p = sub.add_parser("librispeech", help="OUT/LibriSpeech/<split>/<spk>/<chapter>/...", **fmt)
    _common_arguments(p, 800, 100, 100)
    p.add_argument("--text", default=None, help="ID<TAB>sentence file (default: LJ Speech)")
    p.add_argument("--eval-text", default=None, help="evaluation-only sentences")
    p.add_argument("--split-names", nargs=3, default=list(LIBRISPEECH_SPLITS),
                   metavar=("TRAIN", "DEV", "TEST"))
    p = sub.add_parser("slurp", help="OUT/dataset/slurp/*.jsonl + OUT/slurp_real/*.flac", **fmt)
    _common_arguments(p, 1000, 200, 200)
    p.add_argument("--slurp-text", nargs="+", default=None,
                   help="SLURP .jsonl files the sentences come from")
    p.add_argument("--eval-text", default=None, help="evaluation-only SLURP records (.jsonl)")
    p.add_argument("--recordings-per-record", type=int, default=1,
                   help="recordings (different voices) per record")
    p.add_argument("--far-field-prob", type=float, default=0.3,
                   help="share of recordings that also get a far-field twin")
    p = sub.add_parser("voices", help="list the voice identities", **fmt)
    p.add_argument("--available", action="store_true", help="only those installed here")
    return parser


def main(argv=None):
    """Entry point of ``cald-synth``; returns the exit status.

    Example
    -------
    >>> main(["librispeech", "--output-dir", "/nonexistent/out", "--engines", "bogus"])
    2
    """
    args, status = parse(build_parser(), argv)
    if args is None:
        return status
    from cald_speech.data.synth.bookkeeping import format_summary
    from cald_speech.data.synth.corpora import synthesize_librispeech, synthesize_slurp
    from cald_speech.data.voices import list_voices

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.time()
    try:
        if args.command == "voices":
            for v in list_voices(available_only=args.available):
                print(f"{v.speaker}  {v.name:<36} {v.sex}  {v.describe()}")
            return 0
        common = {"jobs": args.jobs, "noise_dir": args.noise_dir, "data_dir": args.data_dir,
                  "overwrite": args.overwrite,
                  "progress": not args.quiet, **_options_from_args(args)}
        if args.command == "librispeech":
            summary = synthesize_librispeech(
                args.output_dir, args.train, args.dev, args.test, text_file=args.text,
                eval_text_file=args.eval_text, split_names=args.split_names, **common)
        else:
            summary = synthesize_slurp(
                args.output_dir, args.train, args.dev, args.test, slurp_files=args.slurp_text,
                eval_slurp_file=args.eval_text,
                recordings_per_record=args.recordings_per_record,
                far_field_prob=args.far_field_prob, **common)
    except CaldError as exc:
        return fail("cald-synth", exc)
    except OSError as exc:  # e.g. no permission to write the corpus folder, disk full
        print(f"cald-synth: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("cald-synth: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(format_summary(summary))
    state = "already up to date" if summary.get("up_to_date") else "done"
    print(f"{state} in {time.time() - start:.1f} s")
    return 0
