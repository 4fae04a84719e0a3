"""What every console script of the package has in common.

``cald-transcribe``, ``cald-bench``, ``cald-convert``, ``cald-prepare``, ``cald-synth`` and
the ``python -m cald_speech...`` tools follow one convention:

- exit status ``0`` on success, ``1`` when some input failed (a file or folder that
  cannot be used, an item that could not be processed), ``2`` for a usage error (bad
  arguments, or a setting that cannot work);
- an error is one line on stderr, ``prog: error: message (fix: ...)``, as argparse
  writes its own;
- ``--version`` prints ``prog <version>``;
- ``--help`` states every option's default and choices (:class:`HelpFormatter`) and,
  like usage errors, answers before any model code is imported;
- one spelling per idea: ``--output-dir DIR`` for an output folder, ``--output FILE`` for
  an output file, several values of an option separated by spaces (``--mixers a b``);
  older spellings keep working as deprecated aliases that say so on stderr
  (:func:`deprecated_option`, :func:`deprecated_positional`, :class:`ListAction`);
- third-party progress bars and notices stay quiet unless ``--verbose`` (:func:`quiet`).

Example
-------
>>> import argparse
>>> from cald_speech.errors import ConfigError, DataError
>>> p = add_version(argparse.ArgumentParser(prog="cald-demo"))
>>> p.parse_args(["--version"])
Traceback (most recent call last):
...
SystemExit: 0
>>> fail("cald-demo", DataError("a.wav", "empty", "remove it"), file=sys.stdout)
cald-demo: error: a.wav: empty (fix: remove it)
1
>>> exit_status(ConfigError("--window-s must be positive"))
2
"""

import argparse
import logging
import os
import sys

from cald_speech import __version__
from cald_speech.errors import ConfigError

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "MIXER_NAMES", "HelpFormatter", "ListAction",
           "add_verbose", "add_version", "deprecated_option", "deprecated_positional",
           "exit_status", "fail", "make_parser", "parse", "quiet", "warn"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: The mixers the console scripts offer (``cald_speech.mixers.available_mixers()``, kept
#: equal by a test): listed here so that ``--help`` needs no model code.
MIXER_NAMES = ("attention", "bimamba2", "bimamba2_shared", "linear_attention", "linformer")


def add_version(parser):
    """Adds ``--version`` to ``parser`` and returns it."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def exit_status(exc):
    """``2`` for a setting that cannot work (:class:`ConfigError`), else ``1``."""
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED


def fail(prog, exc, file=None):
    """Prints ``prog: error: exc`` to stderr (or ``file``); returns the exit status."""
    print(f"{prog}: error: {exc}", file=file or sys.stderr)
    return exit_status(exc)


def parse(parser, argv):
    """``(args, None)``, or ``(None, status)`` when argparse exits (help, version, usage).

    Deprecated positional arguments (:func:`deprecated_positional`) are moved to their
    options here, with a warning; a parser with ``--verbose`` (:func:`add_verbose`) gets
    the libraries' notices silenced unless it is given (:func:`quiet`).

    Example
    -------
    >>> import argparse
    >>> p = argparse.ArgumentParser(prog="x")
    >>> _ = p.add_argument("--n", type=int)
    >>> parse(p, ["--n", "3"])[0].n, parse(p, ["--help"])[1]   # doctest: +ELLIPSIS
    usage: x ...
    (3, 0)
    """
    try:
        args = parser.parse_args(argv)
        for sub in _chosen_parsers(parser, args):
            for name, option, required in getattr(sub, "_cald_positionals", ()):
                _move_positional(sub, args, name, option, required)
            for action in getattr(sub, "_cald_required", ()):
                if getattr(args, action.dest, None) is None:
                    sub.error("the following arguments are required: "
                              f"{action.option_strings[0]}")
        if isinstance(getattr(args, "verbose", None), bool):
            quiet(args.verbose)
        return args, None
    except SystemExit as exc:
        return None, int(exc.code or 0)


def warn(prog, message, file=None):
    """Prints ``prog: warning: message`` on stderr (or ``file``)."""
    print(f"{prog}: warning: {message}", file=file or sys.stderr)


def _shown(value):
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, with every option's default and choices stated.

    An option's help gets ``(default: X)`` unless it already speaks of its default or
    has none (``None``, a flag off, an empty list); choices hidden by a metavar are
    listed too.

    Example
    -------
    >>> p = make_parser("x", "An example.")
    >>> _ = p.add_argument("--n", type=int, default=3, help="how many")
    >>> _ = p.add_argument("--kind", default="a", choices=["a", "b"], metavar="K", help="kind")
    >>> "how many (default: 3)" in p.format_help()
    True
    >>> "kind (one of: a, b; default: a)" in p.format_help()
    True
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if text is argparse.SUPPRESS or not action.option_strings:
            return text
        extra = []
        choices = getattr(action, "allowed", None) or (action.choices if action.metavar
                                                      else None)
        if choices and "one of" not in text:
            extra.append("one of: " + ", ".join(str(c) for c in choices))
        default = action.default
        if ("default" not in text.lower() and default not in (None, False, argparse.SUPPRESS)
                and default != [] and action.nargs != 0):
            extra.append("default: " + _shown(default).replace("%", "%%"))
        if extra:
            text = f"{text} ({'; '.join(extra)})" if text else "; ".join(extra)
        return text


def make_parser(prog, description, **kwargs):
    """An ``ArgumentParser`` with :class:`HelpFormatter` and ``--version``."""
    kwargs.setdefault("formatter_class", HelpFormatter)
    return add_version(argparse.ArgumentParser(prog=prog, description=description, **kwargs))


class _Alias(argparse.Action):
    """A deprecated spelling of another option: warns, then acts as that option."""

    def __init__(self, option_strings, dest, target=None, **kwargs):
        super().__init__(option_strings, dest, nargs=target.nargs, const=target.const,
                         type=target.type, choices=target.choices, metavar=target.metavar,
                         default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.target = target

    def __call__(self, parser, namespace, values, option_string=None):
        warn(parser.prog, f"{option_string} is deprecated; use "
                          f"{self.target.option_strings[0]}")
        self.target(parser, namespace, values, self.target.option_strings[0])


def deprecated_option(parser, old, new):
    """Adds ``old`` as a deprecated spelling of the option ``new`` (hidden from --help).

    Example
    -------
    >>> p = make_parser("x", "An example.")
    >>> _ = p.add_argument("--output-dir", default=".")
    >>> deprecated_option(p, "--out-dir", "--output-dir")
    >>> p.parse_args(["--out-dir", "a"]).output_dir
    'a'
    """
    target = parser._option_string_actions[new]
    parser.add_argument(old, dest=target.dest, action=_Alias, target=target)
    if target.required:  # either spelling satisfies it: checked by parse()
        target.required = False
        target.help = f"{target.help} (required)"
        parser._cald_required = [*getattr(parser, "_cald_required", ()), target]


def deprecated_positional(parser, name, option, required=True):
    """Accepts the option ``option`` also as the positional ``name`` (deprecated).

    :func:`parse` moves a positional value to the option with a warning; giving both is a
    usage error, and so is giving neither when ``required``.
    """
    parser.add_argument(name, nargs="?", default=None, help=argparse.SUPPRESS)
    parser._cald_positionals = [*getattr(parser, "_cald_positionals", ()),
                                (name, option, required)]


def _chosen_parsers(parser, args):
    """``parser`` and the sub-parsers of the commands chosen in ``args``."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices.get(getattr(args, action.dest, None) or "")
            if sub is not None:
                yield from _chosen_parsers(sub, args)


def _move_positional(parser, args, name, option, required):
    dest = parser._option_string_actions[option].dest
    value = getattr(args, name, None)
    delattr(args, name)
    if value is not None:
        if getattr(args, dest, None) is not None:
            parser.error(f"give {option} once (a positional {name.upper()} is its "
                         "deprecated spelling)")
        warn(parser.prog, f"a positional {name.upper()} is deprecated; use {option} "
                          f"{name.upper()}")
        setattr(args, dest, value)
    elif required and getattr(args, dest, None) is None:
        parser.error(f"the following arguments are required: {option}")


class ListAction(argparse.Action):
    """An option of several values separated by spaces (``--mixers a b``).

    A value may also be written comma-separated (``--mixers a,b``): the older spelling,
    accepted with a warning. Each item is converted by ``item_type`` and checked
    against ``allowed``.

    Example
    -------
    >>> p = make_parser("x", "An example.")
    >>> _ = p.add_argument("--minutes", action=ListAction, item_type=float, default=[1.0])
    >>> p.parse_args(["--minutes", "0.5", "2"]).minutes
    [0.5, 2.0]
    """

    def __init__(self, option_strings, dest, item_type=str, allowed=None, nargs="+",
                 **kwargs):
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)
        self.item_type, self.allowed = item_type, allowed

    def __call__(self, parser, namespace, values, option_string=None):
        items = []
        prior = getattr(namespace, self.dest, None)
        if prior is not None and prior is not self.default:
            items = list(prior)  # given again: --model A --model B is --model A B
        for value in values:
            if not value.strip():
                continue  # --keep-attention "": none
            parts = [value]
            if "," in value:
                parts = [v.strip() for v in value.split(",") if v.strip()]
                warn(parser.prog, f"comma-separated lists are deprecated; separate the "
                                  f"values with spaces: {option_string} {' '.join(parts)}")
            for part in parts:
                try:
                    item = self.item_type(part)
                except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                    raise argparse.ArgumentError(self, f"invalid value '{part}' ({exc})") \
                        from None
                if self.allowed is not None and item not in self.allowed:
                    raise argparse.ArgumentError(
                        self, f"invalid choice '{part}' (choose from "
                              f"{', '.join(map(str, self.allowed))})")
                items.append(item)
        setattr(namespace, self.dest, items)


def add_verbose(parser):
    """Adds ``-v/--verbose`` (third-party progress bars and notices) to ``parser``."""
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' own progress bars and notices")
    return parser


#: Start-up notices of other libraries that say nothing about the user's run.
NOTICES = ("torchvision is not available",)


class _DropNotices(logging.Filter):
    def filter(self, record):
        return not any(n in record.getMessage() for n in NOTICES)


def quiet(verbose=False):
    """Silences third-party loading bars and start-up notices, unless ``verbose``.

    transformers' ``Loading weights`` bars and its info messages, Hugging Face Hub bars
    and SpeechBrain's optional-dependency notice (``torchvision is not available``) are
    left out; the package's own progress bars and log lines are not affected. Call it
    before those libraries load models (it sets their environment, and their switches
    where they are imported already).
    """
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sb_logger = logging.getLogger("speechbrain.utils.train_logger")
    if not any(isinstance(f, _DropNotices) for f in sb_logger.filters):
        sb_logger.addFilter(_DropNotices())
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
