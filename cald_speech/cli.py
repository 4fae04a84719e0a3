"""What every console script of the package has in common.

``cald-transcribe``, ``cald-bench``, ``cald-convert``, ``cald-prepare``, ``cald-synth`` and
the ``python -m cald_speech...`` tools follow one convention:

- exit status ``0`` on success, ``1`` when some input failed (a file or folder that
  cannot be used, an item that could not be processed), ``2`` for a usage error (bad
  arguments, or a setting that cannot work);
- an error is one line on stderr, ``prog: error: message (fix: ...)``, as argparse
  writes its own;
- ``--version`` prints ``prog <version>``.

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

import sys

from cald_speech import __version__
from cald_speech.errors import ConfigError

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "add_version", "exit_status", "fail",
           "parse"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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
        return parser.parse_args(argv), None
    except SystemExit as exc:
        return None, int(exc.code or 0)
