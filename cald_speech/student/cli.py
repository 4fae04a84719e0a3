"""``cald-convert``: converts a saved transformers folder into a student folder and prints
where the parameters went."""

import argparse
import ast
import sys
from pathlib import Path

from cald_speech.cli import add_version, fail, parse
from cald_speech.errors import CaldError, ConfigError, DataError
from cald_speech.families import SUPPORTED_CLASSES
from cald_speech.hub import resolve_model_source
from cald_speech.mixers import get_mixer_class
from cald_speech.mixers.ops.fused import IMPL_ENV
from cald_speech.student.conversion import INITS, check_conversion, convert
from cald_speech.student.files import read_config
from cald_speech.student.io import load_model
from cald_speech.student.model import supported_class
from cald_speech.student.report import format_table, parameter_table


def _parse_layers(text):
    if not text.strip():
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer indices like 0,11, got '{text}'"
        ) from exc


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
    parser = argparse.ArgumentParser(
        prog="cald-convert",
        description=(
            "Convert a local transformers wav2vec2 / HuBERT / WavLM folder (or a hub id "
            "in the local Hugging Face cache; never downloaded) into a "
            "linear-time student folder (attention replaced by a mixer, every other "
            "weight copied) and print where the parameters went. Supported classes: "
            + ", ".join(SUPPORTED_CLASSES)
        ),
    )
    parser.add_argument("src", help="folder of the transformers model (config.json + "
                        "weights), or a hub id (org/name[@revision]) in the local "
                        "Hugging Face cache")
    parser.add_argument("dst", help="output folder of the student")
    parser.add_argument("--mixer", default="bimamba2",
                        help="mixer name (default: bimamba2; see cald_speech.mixers)")
    parser.add_argument("--init", default="attention", choices=INITS,
                        help="start mixers from the attention weights or at random")
    parser.add_argument("--keep-attention", type=_parse_layers, default=[],
                        metavar="I,J", help="encoder layers (0-based) left as attention")
    parser.add_argument("--mixer-opt", type=_parse_option, action="append", default=[],
                        metavar="KEY=VALUE", help="mixer option, repeatable (e.g. d_state=64)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into DST even if it already holds a model")
    return add_version(parser)


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
    try:
        src, dst = resolve_model_source(args.src, "source model"), Path(args.dst)
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
        return fail("cald-convert", exc)
    layers = student.layer_kinds()
    print(f"{type(teacher).__name__} ({len(layers)} layers) -> student in {dst}")
    print(f"mixer {args.mixer}, init {args.init}, kept attention layers: "
          f"{student.cald['keep_attention'] or 'none'}")
    execution = sorted(set(mixer_cfg) & set(get_mixer_class(args.mixer).execution_options))
    if execution:
        print(f"not saved with the model (execution settings, chosen where it runs; "
              f"the kernel path by ${IMPL_ENV}): {', '.join(execution)}")
    print(format_table(parameter_table(teacher, student)))
    return 0




if __name__ == "__main__":
    sys.exit(main())
