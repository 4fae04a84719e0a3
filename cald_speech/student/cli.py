"""``cald-convert``: converts a saved transformers folder into a student folder and prints
where the parameters went.

``cald-convert SRC --output-dir DST [--mixer NAME] ...`` (the older ``cald-convert SRC
DST`` still works, with a deprecation warning). The parser needs no model code:
``--help`` and usage errors answer at once.
"""

import argparse
import ast
import math
import sys

from cald_speech.cli import (
    MIXER_NAMES,
    ListAction,
    deprecated_positional,
    fail,
    make_parser,
    parse,
)
from cald_speech.errors import CaldError, ConfigError, DataError

#: Ways to start the mixers (:data:`cald_speech.student.conversion.INITS`).
INITS = ("attention", "random")
PROG = "cald-convert"


def _parse_option(text):
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got '{text}'")
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a plain string such as impl=torch
    return key.strip(), value


def build_parser():
    """The ``cald-convert`` argument parser."""
    parser = make_parser(
        PROG,
        "Convert a local transformers wav2vec2 / HuBERT / WavLM folder (or a hub id "
        "in the local Hugging Face cache; never downloaded) into a "
        "linear-time student folder (attention replaced by a mixer, every other "
        "weight copied) and print where the parameters went.",
    )
    parser.add_argument("src", help="folder of the transformers model (config.json + "
                        "weights), or a hub id (org/name[@revision]) in the local "
                        "Hugging Face cache")
    parser.add_argument("--output-dir", metavar="DIR", default=None,
                        help="output folder of the student (required)")
    deprecated_positional(parser, "dst", "--output-dir")
    parser.add_argument("--mixer", default="bimamba2", choices=MIXER_NAMES, metavar="NAME",
                        help="the token mixer that replaces self-attention")
    parser.add_argument("--init", default="attention", choices=INITS,
                        help="start mixers from the attention weights or at random")
    parser.add_argument("--keep-attention", action=ListAction, item_type=int, nargs="*",
                        default=[], metavar="I",
                        help="encoder layers (0-based) left as attention (default: none)")
    parser.add_argument("--mixer-opt", action=ListAction, item_type=_parse_option,
                        default=[], metavar="KEY=VALUE",
                        help="mixer options (e.g. --mixer-opt d_state=64 expand=2)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into the output folder even if it already holds a model")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' own progress bars and notices")
    return parser


def size_notes(rows, student, config):
    """Lines that explain a student larger than its teacher and a limit on input length.

    Arguments
    ---------
    rows : list of dict
        :func:`~cald_speech.student.report.parameter_table` rows.
    student : Student
        The converted model.
    config : dict
        The source ``config.json``.
    """
    notes = []
    total = rows[-1]
    new = sum(r["student"] for r in rows if r["status"] == "new")
    dropped = sum(r["teacher"] for r in rows if r["status"] == "dropped")
    if total["student"] > 1.1 * total["teacher"]:
        notes.append(
            f"the student has {total['student'] / total['teacher']:.1f}x the teacher's "
            f"parameters: its mixers hold {new:,}, the attention they replace held "
            f"{dropped:,}")
    names = {m.name for m in student.mixers() if m is not None}
    if "linformer" in names:
        mixer = next(m for m in student.mixers() if m is not None and m.name == "linformer")
        notes.append(
            f"linformer projects keys and values along time with E and F of k x max_len = "
            f"{mixer.k} x {mixer.max_len} weights per layer (a smaller max_len, e.g. "
            "--mixer-opt max_len=1024, makes the student smaller and the input limit "
            "shorter)")
    frames = student.max_frames()
    if frames:
        stride = math.prod(config.get("conv_stride") or [5, 2, 2, 2, 2, 2, 2])
        rate = 16000
        notes.append(
            f"input limit: {frames} frames ({frames * stride / rate:.0f} s of audio) in one "
            "pass; cald-transcribe reads longer files in windows")
    return notes


def main(argv=None):
    """Entry point of ``cald-convert``; returns the exit status.

    Example
    -------
    >>> main(["--help"])  # doctest: +ELLIPSIS
    usage: cald-convert ...
    0
    """
    args, status = parse(build_parser(), argv)
    if args is None:
        return status
    from pathlib import Path

    from cald_speech.families import SUPPORTED_CLASSES
    from cald_speech.hub import resolve_model_source
    from cald_speech.mixers import get_mixer_class
    from cald_speech.mixers.ops.fused import IMPL_ENV
    from cald_speech.student.conversion import check_conversion, convert
    from cald_speech.student.files import read_config
    from cald_speech.student.io import load_model
    from cald_speech.student.model import supported_class
    from cald_speech.student.report import format_table, parameter_table

    try:
        src, dst = resolve_model_source(args.src, "source model"), Path(args.output_dir)
        config = read_config(src)
        if "cald" in config:
            raise ConfigError(f"{src} already holds a student; convert its teacher instead")
        architectures = config.get("architectures") or []
        if not architectures:
            raise DataError(src / "config.json", "names no architecture",
                            f"add \"architectures\": [one of {', '.join(SUPPORTED_CLASSES)}]")
        model_cls = supported_class(architectures[0])
        if (dst / "config.json").exists() and not args.overwrite:
            raise DataError(dst, "already holds a model", "choose another folder or --overwrite")
        if dst.resolve() == src.resolve():
            raise DataError(dst, "is the source folder", "choose another output folder")
        mixer_cfg = dict(args.mixer_opt)
        hf_config = model_cls.config_class.from_dict(config)
        check_conversion(hf_config, args.mixer, args.init, args.keep_attention, **mixer_cfg)
        teacher = load_model(src)
        student = convert(teacher, mixer=args.mixer, init=args.init,
                          keep_attention=args.keep_attention, **mixer_cfg)
        student.save_pretrained(dst, extra_files_from=src)
    except CaldError as exc:
        return fail(PROG, exc)
    layers = student.layer_kinds()
    print(f"{type(teacher).__name__} ({len(layers)} layers) -> student in {dst}")
    print(f"mixer {args.mixer}, init {args.init}, kept attention layers: "
          f"{student.cald['keep_attention'] or 'none'}")
    execution = sorted(set(mixer_cfg) & set(get_mixer_class(args.mixer).execution_options))
    if execution:
        print(f"not saved with the model (execution settings, chosen where it runs; "
              f"the kernel path by ${IMPL_ENV}): {', '.join(execution)}")
    rows = parameter_table(teacher, student)
    print(format_table(rows))
    for note in size_notes(rows, student, config):
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
