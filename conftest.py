"""What the test run needs from the machine, and what it tells when it is not there.

- **Shared data.** The offline data (sentence lists, SLURP annotations) lives in
  ``$CALD_SPEECH_DATA`` or in ``shared/data`` beside the repository
  (:func:`cald_speech.data.synth.default_data_dir`). Tests marked ``shared_data`` and the
  doctests of the synthesizer package (:mod:`cald_speech.data.synth`, which synthesize
  from those sentence lists) skip, with the reason, where it is absent.
- **Synthesizer engines.** Tests marked ``synth_engines`` (all engines) or
  ``synth_engines("flite", ...)`` speak with those text-to-speech programs and sox
  (``tools/check_system.sh`` installs them); they skip, naming what is missing, where
  one is not on ``PATH``. Every other test runs without them.
- **tests/interp** (the fused Triton kernels under Triton's interpreter) runs only in
  ``make test-interp``; a plain ``pytest`` run that covers the folder ends with a
  banner saying that it was not run.
- **Skips in CI.** With ``CALD_STRICT_SKIPS=1`` (``.ci/run``) a test skipped for a
  reason outside :data:`ALLOWED_SKIPS` (hardware the machine lacks) fails the run: the
  CI machine has the shared data, the engines and every Python dependency.
"""

import os
import shutil
from pathlib import Path

import pytest
import torch

import cald_speech.data.synth
from cald_speech.data.synth import default_data_dir
from cald_speech.data.voices import ENGINES
from cald_speech.mixers.ops.fused import triton_interpreter

SHARED_DATA = default_data_dir()
HAVE_SHARED_DATA = (SHARED_DATA / "text" / "ljspeech_sentences.tsv").is_file()
SYNTH_PACKAGE = Path(cald_speech.data.synth.__file__).resolve().parent
INTERP_TESTS = Path(__file__).resolve().parent / "tests" / "interp"

#: Environment variable that turns skips outside ``ALLOWED_SKIPS`` into a failed run.
STRICT_SKIPS_ENV = "CALD_STRICT_SKIPS"


def _no_bf16_gpu():
    return not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0)


#: Skip reasons a strict run accepts: (text in the reason, whether this machine may
#: skip for it). Only hardware: a CUDA device (one with bfloat16), or its absence.
ALLOWED_SKIPS = (
    ("needs a CUDA device", lambda: not torch.cuda.is_available()),
    ("needs a CUDA device with native bfloat16", _no_bf16_gpu),
    ("needs a machine without a usable GPU", torch.cuda.is_available),
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "synth_engines(*engines): speaks with these text-to-speech engines "
        f"({', '.join(ENGINES)}; all when none is named) and sox (skipped without them)")


def missing_programs(engines):
    """The programs of ``engines`` (names of :data:`ENGINES`), and sox, not on ``PATH``."""
    programs = [ENGINES[e] for e in engines] + ["sox"]
    return [p for p in programs if shutil.which(p) is None]


def pytest_collection_modifyitems(config, items):
    no_data = pytest.mark.skip(
        reason=f"shared data not found at {SHARED_DATA} (set $CALD_SPEECH_DATA)")
    for item in items:
        doctest_of_synth = (isinstance(item, pytest.DoctestItem)
                            and item.path.resolve().parent == SYNTH_PACKAGE)
        if not HAVE_SHARED_DATA and (doctest_of_synth or item.get_closest_marker("shared_data")):
            item.add_marker(no_data)
        engines = item.get_closest_marker("synth_engines")
        if engines is not None:
            missing = missing_programs(engines.args or list(ENGINES))
            if missing:
                item.add_marker(pytest.mark.skip(
                    reason=f"synthesizer engines not installed: {', '.join(missing)} "
                           "(tools/check_system.sh)"))


def _skip_reason(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _allowed(reason):
    return any(text in reason and may() for text, may in ALLOWED_SKIPS)


#: (node id, reason) of every skip of this run (tests and whole modules)
SKIPS = []


def _record_skip(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        SKIPS.append((report.nodeid, _skip_reason(report)))


def pytest_runtest_logreport(report):
    _record_skip(report)


def pytest_collectreport(report):
    _record_skip(report)


def _strict():
    return os.environ.get(STRICT_SKIPS_ENV, "").strip() not in ("", "0")


def _disallowed_skips():
    return [(node, reason) for node, reason in SKIPS if not _allowed(reason)]


def pytest_sessionfinish(session, exitstatus):
    if _strict() and _disallowed_skips() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _covers_interp(config):
    """Whether this run's paths include tests/interp (the folder or one above it)."""
    root = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (root / arg.split("::")[0]).resolve()
        if path == INTERP_TESTS or path in INTERP_TESTS.parents:
            return True
    return False


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    write = terminalreporter
    if not triton_interpreter() and _covers_interp(config):
        write.write_sep("!", "tests/interp was NOT run", red=True, bold=True)
        write.write_line(
            "The fused Triton kernels against the PyTorch path run only under Triton's CPU "
            "interpreter: `make test-interp` (`make test` runs both).", red=True, bold=True)
    if _strict():
        bad = _disallowed_skips()
        if bad:
            write.write_sep("!", f"{len(bad)} test(s) skipped for reasons CI does not accept "
                            f"({STRICT_SKIPS_ENV}=1)", red=True, bold=True)
            for node, reason in bad:
                write.write_line(f"{node}: {reason}", red=True)
