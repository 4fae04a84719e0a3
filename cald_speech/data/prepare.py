"""``cald-prepare``: corpus folders → SpeechBrain CSV manifests (and CTC tokenizers).

Usage::

    cald-prepare librispeech DATA_FOLDER --output-dir DIR [--splits dev-clean test-clean]
    cald-prepare slurp DATA_FOLDER --output-dir DIR [--recording headset] [--use-synthetic]
    cald-prepare tokenizer CSV --output OUT.json [--kind char|unigram|bpe] [--column wrd]
    cald-prepare merge A.csv B.csv --output OUT.csv [--rename transcript=wrd] [--prefix-ids]

The older spellings (the output folder or file as a positional argument) still work,
with a deprecation warning.

It prints a summary table (rows kept, items skipped by reason, hours per split). Bad
input ends with a one-line error naming the file and the fix, and exit status 1 (2 for
a usage error; see :mod:`cald_speech.cli`).

Example
-------
>>> args, _ = parse(build_parser(), ["slurp", "corpus", "--output-dir", "csv",
...                                  "--recording", "all"])
>>> args.output_dir, args.recording, args.splits
('csv', 'all', ['train', 'devel', 'test'])
"""

import logging
import sys

from cald_speech.cli import (
    HelpFormatter,
    ListAction,
    deprecated_positional,
    fail,
    make_parser,
    parse,
    warn,
)
from cald_speech.errors import CaldError, ConfigError


def _add_common(p):
    p.add_argument("data_folder", help="corpus root folder")
    p.add_argument("--output-dir", metavar="DIR", default=None,
                   help="where the <split>.csv manifests are written (required)")
    deprecated_positional(p, "save_folder", "--output-dir")
    p.add_argument("--sorting", choices=["none", "ascending", "descending"], default="none",
                   help="row order: by ID (none) or by duration")
    p.add_argument("--min-duration", type=float, default=None, metavar="SEC",
                   help="skip (and count) utterances shorter than this")
    p.add_argument("--max-duration", type=float, default=None, metavar="SEC",
                   help="skip (and count) utterances longer than this")
    p.add_argument("--check-audio", choices=["header", "full"], default="header",
                   help="read audio headers only (fast) or decode every file")
    p.add_argument("--allow-empty", action="store_true",
                   help="write a header-only CSV for a split without usable audio "
                        "instead of failing")
    p.add_argument("--force", action="store_true", help="prepare again even if up to date")
    p.add_argument("--workers", type=int, default=4, help="threads reading audio headers")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def build_parser():
    """The argument parser of ``cald-prepare``."""
    parser = make_parser(
        "cald-prepare",
        "Write SpeechBrain CSV manifests for LibriSpeech- or SLURP-layout "
        "corpora, merge manifests, or build a CTC tokenizer from a manifest.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    sub = parser.add_subparsers(dest="corpus", required=True)
    fmt = {"formatter_class": HelpFormatter}

    p = sub.add_parser("librispeech", help="<split>/<spk>/<chapter>/*.trans.txt + audio",
                       **fmt)
    _add_common(p)
    p.add_argument("--splits", nargs="+", default=["train-clean-100", "dev-clean", "test-clean"],
                   help="split folders to prepare")
    p.add_argument("--spk-id", choices=["speaker", "speaker-chapter"], default="speaker",
                   help="spk_id column: the reader, or reader-chapter as SpeechBrain's recipe")

    p = sub.add_parser("slurp", help="dataset/slurp/*.jsonl + slurp_real/ (+ slurp_synth/)",
                       **fmt)
    _add_common(p)
    p.add_argument("--splits", nargs="+", default=["train", "devel", "test"],
                   help="splits to prepare")
    p.add_argument("--recording", choices=["headset", "far_field", "all"], default="headset",
                   help="which real recordings to use")
    p.add_argument("--use-synthetic", action="store_true",
                   help="add train_synthetic records (slurp_synth/) to train.csv")
    p.add_argument("--annotation-folder", default=None,
                   help="folder of the .jsonl files (default: DATA_FOLDER/dataset/slurp)")
    p.add_argument("--real-audio", default=None,
                   help="folder of the real recordings (default: DATA_FOLDER/slurp_real)")
    p.add_argument("--synth-audio", default=None,
                   help="folder of the synthetic recordings (default: DATA_FOLDER/slurp_synth)")

    p = sub.add_parser("tokenizer", help="build a CTC tokenizer from a CSV manifest", **fmt)
    p.add_argument("csv", help="manifest to read transcripts from")
    p.add_argument("--output", metavar="FILE", default=None,
                   help="tokenizer .json file (or folder) to write (required)")
    deprecated_positional(p, "out", "--output")
    p.add_argument("--kind", choices=["char", "unigram", "bpe"], default="char",
                   help="characters, or a SentencePiece unigram or BPE model")
    p.add_argument("--column", default="wrd", help="transcript column")
    p.add_argument("--vocab-size", type=int, default=256, help="SentencePiece vocabulary size")
    p.add_argument("--default-chars", action="store_true",
                   help="char kind: use the default set (blank, |, A-Z, ') instead of the "
                        "characters found in the CSV")
    p.add_argument("--unk", action="store_true", help="char kind: add <unk> for unknown chars")

    p = sub.add_parser("merge", help="several manifests -> one (train on several corpora)",
                       **fmt)
    p.add_argument("inputs", nargs="+", metavar="CSV", help="manifests to merge, in order")
    p.add_argument("--output", metavar="FILE", default=None,
                   help="merged .csv to write (required)")
    p.add_argument("--columns", action=ListAction, default=["ID", "duration", "wav", "wrd"],
                   metavar="COLUMN", help="columns of the merged manifest")
    p.add_argument("--rename", nargs="*", default=["transcript=wrd"], metavar="OLD=NEW",
                   help="column renames applied to inputs that have OLD")
    p.add_argument("--prefix-ids", action="store_true",
                   help="prefix every ID with its input's number (for colliding IDs)")
    p.add_argument("--keep-voices", action=ListAction, default=None, metavar="NAME",
                   help="voices or engines: keep only their rows")
    p.add_argument("--drop-voices", action=ListAction, default=None, metavar="NAME",
                   help="voices or engines: drop their rows")
    p.add_argument("--voice-tables", nargs="*", default=[], metavar="CORPUS",
                   help="synthetic corpus folders (their utterances.tsv names the voices)")
    return parser


def main(argv=None):
    """Entry point of ``cald-prepare``; returns the exit status."""
    args, status = parse(build_parser(), argv)
    if args is None:
        return status
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(message)s",
    )
    try:
        if args.corpus == "tokenizer":
            return _tokenizer(args)
        if args.corpus == "merge":
            return _merge(args)
        common = dict(
            sorting=args.sorting, min_duration=args.min_duration,
            max_duration=args.max_duration, check_audio=args.check_audio,
            allow_empty=args.allow_empty, force=args.force, num_workers=args.workers,
        )
        if args.corpus == "librispeech":
            from cald_speech.data.librispeech import prepare_librispeech

            summary = prepare_librispeech(
                args.data_folder, args.output_dir, splits=args.splits, spk_id=args.spk_id,
                **common,
            )
        else:
            from cald_speech.data.slurp import prepare_slurp

            summary = prepare_slurp(
                args.data_folder, args.output_dir, splits=args.splits,
                recording=args.recording, use_synthetic=args.use_synthetic,
                annotation_folder=args.annotation_folder,
                real_audio_folder=args.real_audio, synth_audio_folder=args.synth_audio,
                **common,
            )
    except CaldError as exc:
        return fail("cald-prepare", exc)
    if args.json:
        import json

        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary)
        if summary.up_to_date:
            print("All manifests were up to date; nothing was done (use --force to redo).")
    return 0


def _tokenizer(args):
    from cald_speech.data.tokenizer import build_tokenizer

    if args.kind == "char" and args.default_chars:
        tok = build_tokenizer("char", unk=args.unk)
    else:
        tok = build_tokenizer(
            args.kind, csv_path=args.csv, column=args.column, vocab_size=args.vocab_size,
            unk=args.unk,
        )
    path = tok.save(args.output)
    print(f"{tok!r} written to {path}")
    return 0


def _merge(args):
    from cald_speech.data.merge import merge_manifests

    if args.output is None:  # the older form: merge OUT.csv A.csv B.csv
        if len(args.inputs) < 2:
            raise ConfigError("give the merged manifest's path with --output FILE")
        args.output = args.inputs.pop(0)
        warn("cald-prepare merge", "a positional OUT is deprecated; use --output OUT")
    rename = {}
    for item in args.rename:
        old, sep, new = item.partition("=")
        if not (sep and old and new):
            raise ConfigError(f"--rename {item!r}: write OLD=NEW, e.g. transcript=wrd")
        rename[old] = new
    n = merge_manifests(args.output, args.inputs, columns=args.columns, rename=rename,
                        prefix_ids=args.prefix_ids, keep_voices=args.keep_voices or None,
                        drop_voices=args.drop_voices or None, voice_tables=args.voice_tables)
    print(f"{n} rows from {len(args.inputs)} manifest(s) written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
