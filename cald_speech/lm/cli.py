"""``cald-lm``: n-gram language models for beam search, built offline.

Example
-------
>>> main(["build", "--help"])  # doctest: +ELLIPSIS
usage: cald-lm build ...
0
"""

import sys

from cald_speech.cli import HelpFormatter, deprecated_option, fail, make_parser, parse
from cald_speech.errors import CaldError

PROG = "cald-lm"


def build_parser():
    """The ``cald-lm`` parser (one command: ``build``)."""
    p = make_parser(PROG, "Word n-gram language models for CTC beam search.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", prog=f"{PROG} build", help="estimate an ARPA model from text",
                       formatter_class=HelpFormatter,
                       description=(
                           "Estimate a modified Kneser-Ney n-gram model with KenLM's lmplz "
                           "from plain text: .txt (a sentence per line), .tsv (last column), "
                           ".csv (a manifest's text column), .jsonl (SLURP records). The text "
                           "is normalised as the project's recipes normalise transcripts "
                           "(numbers spelled out, punctuation removed) and to the alphabet "
                           "and case of --model."))
    b.add_argument("texts", nargs="+", metavar="TEXT", help="text files")
    b.add_argument("--output", required=True, metavar="LM.arpa", help="ARPA file to write")
    deprecated_option(b, "--out", "--output")
    b.add_argument("--order", type=int, default=4, help="n-gram order")
    b.add_argument("--prune", type=int, nargs="+", default=None, metavar="N",
                   help="lmplz --prune thresholds per order, e.g. 0 0 1 (default: none)")
    b.add_argument("--model", default=None, metavar="DIR",
                   help="model folder or hub id: its vocabulary's alphabet and case "
                        "(default: upper-case A-Z and apostrophe)")
    b.add_argument("--exclude", nargs="+", default=[], metavar="TEXT",
                   help="leave out the sentences of these files (dev and test manifests)")
    b.add_argument("--column", default=None,
                   help="text column of CSV inputs (default: wrd, transcript, text)")
    b.add_argument("--binary", action="store_true",
                   help="also write a KenLM binary <stem>.bin (faster to load)")
    b.add_argument("--memory", default="20%", help="lmplz -S: sorting memory (default 20%%)")
    return p


def main(argv=None):
    """Entry point of ``cald-lm``; returns the exit status."""
    args, status = parse(build_parser(), argv)
    if args is None:
        return status
    from cald_speech.lm.build import build_lm

    try:
        info = build_lm(args.texts, args.output, order=args.order, prune=args.prune,
                        model=args.model, exclude=args.exclude, column=args.column,
                        binary=args.binary, memory=args.memory)
    except CaldError as exc:
        return fail(PROG, exc)
    print(f"{args.output}: {args.order}-gram, {info['sentences']} sentences "
          f"({info['excluded_sentences']} excluded), {info['words']} words, vocabulary "
          f"{info['vocabulary']}; {info['dropped_words']} words outside the alphabet dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
