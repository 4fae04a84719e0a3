"""One convention across the console scripts (:mod:`cald_speech.cli`), checked on every
parser of every script and command: spellings, defaults and choices in ``--help``, lists
separated by spaces, deprecated spellings that still work and say so, and ``--help`` /
usage errors that answer before any model code is imported."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cald_speech.bench.options import PARSERS
from cald_speech.cli import HelpFormatter, parse

SETUP = Path(__file__).resolve().parents[2] / "setup.py"
SCRIPTS = dict(re.findall(r'"(cald-[a-z]+)=([\w.]+):main"', SETUP.read_text()))
#: each console script's parser factory
BUILDERS = {
    "cald-synth": "cald_speech.data.synth.cli:build_parser",
    "cald-prepare": "cald_speech.data.prepare:build_parser",
    "cald-convert": "cald_speech.student.cli:build_parser",
    "cald-transcribe": "cald_speech.inference.cli:build_parser",
    "cald-lm": "cald_speech.lm.cli:build_parser",
}
#: options that name where results are written, and the one spelling of each
OUTPUT_DESTS = {"out_dir", "output_dir", "output_folder", "dst", "save_folder", "out",
                "output"}


def _builder(target):
    import importlib

    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _parsers():
    """``(name, parser)`` of every script, command and sub-command."""
    found = []

    def walk(name, parser):
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, p in action.choices.items():
                    walk(f"{name} {sub}", p)

    for script, target in BUILDERS.items():
        walk(script, _builder(target)())
    for command, factory in PARSERS.items():
        walk(f"cald-bench {command}", factory())
    return found


PARSED = _parsers()


def test_every_console_script_is_covered():
    assert set(SCRIPTS) == {*BUILDERS, "cald-bench"}


def _visible(parser):
    return [a for a in parser._actions
            if a.option_strings and a.help is not argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


@pytest.mark.parametrize("name, parser", PARSED, ids=[n for n, _ in PARSED])
def test_options_follow_one_spelling(name, parser):
    for action in _visible(parser):
        long = [o for o in action.option_strings if o.startswith("--")]
        assert long and all("_" not in o for o in long), (name, action.option_strings)
        if action.dest in OUTPUT_DESTS:
            assert long[0] in ("--output-dir", "--output"), (name, long)
        text = (action.help or "").lower()
        assert "comma-separated" not in text and "comma separated" not in text, (name, long)
    for action in parser._actions:  # positional outputs only as hidden deprecated forms
        if not action.option_strings and action.dest in OUTPUT_DESTS:
            assert action.help is argparse.SUPPRESS, (name, action.dest)


@pytest.mark.parametrize("name, parser", PARSED, ids=[n for n, _ in PARSED])
def test_help_states_every_default_and_choice(name, parser):
    assert issubclass(parser.formatter_class, HelpFormatter), name
    formatter = parser._get_formatter()
    for action in _visible(parser):
        text = formatter._get_help_string(action) or ""
        default = action.default
        if default not in (None, False, [], argparse.SUPPRESS) and action.nargs != 0:
            assert "default" in text.lower(), (name, action.option_strings, text)
        choices = getattr(action, "allowed", None) or action.choices
        if choices and action.metavar is not None:
            assert "one of" in text, (name, action.option_strings, text)
    parser.format_help()  # and it formats


@pytest.mark.parametrize("name, argv, dest, value, warning", [
    ("cald-bench wer", ["--teacher", "t", "--student", "s", "--csv", "c", "--out-dir", "o"],
     "output_dir", "o", "--out-dir is deprecated; use --output-dir"),
    ("cald-bench speed", ["--shape", "wav2vec2-base", "--mixer", "bimamba2,linformer"],
     "mixers", ["bimamba2", "linformer"], "--mixer is deprecated; use --mixers"),
    ("cald-bench speed", ["--shape", "wav2vec2-base", "--minutes", "1,0.5"],
     "minutes", [0.5, 1.0], "separate the values with spaces: --minutes 1 0.5"),
    ("cald-bench runs", ["a", "b", "--names", "x,y"], "names", ["x", "y"],
     "comma-separated lists are deprecated"),
    ("cald-bench decoding", ["--model", "a", "--model", "b", "--csv", "c"], "model",
     ["a", "b"], None),
    ("cald-convert", ["src", "dst"], "output_dir", "dst",
     "a positional DST is deprecated; use --output-dir DST"),
    ("cald-convert", ["src", "--output-dir", "d", "--keep-attention", "0,11"],
     "keep_attention", [0, 11], "comma-separated lists are deprecated"),
    ("cald-prepare librispeech", ["librispeech", "data", "csv"], "output_dir", "csv",
     "a positional SAVE_FOLDER is deprecated; use --output-dir"),
    ("cald-prepare tokenizer", ["tokenizer", "a.csv", "tok.json"], "output", "tok.json",
     "a positional OUT is deprecated; use --output"),
    ("cald-synth librispeech", ["librispeech", "corpus", "--engines", "espeak,flite"],
     "output_dir", "corpus", "a positional OUT is deprecated; use --output-dir"),
    ("cald-lm build", ["build", "a.txt", "--out", "lm.arpa"], "output", "lm.arpa",
     "--out is deprecated; use --output"),
])
def test_old_spellings_still_work_and_say_they_are_deprecated(name, argv, dest, value,
                                                              warning, capsys):
    parser = dict(PARSED)[name.split(" ")[0] if name.startswith(("cald-prepare", "cald-synth",
                                                                 "cald-lm")) else name]
    args, status = parse(parser, argv)
    assert status is None and getattr(args, dest) == value
    err = capsys.readouterr().err
    if warning is None:
        assert err == ""
    else:
        assert warning in err and ": warning: " in err


@pytest.mark.parametrize("argv, message", [
    (["src"], "the following arguments are required: --output-dir"),
    (["src", "dst", "--output-dir", "d"], "give --output-dir once"),
])
def test_a_missing_or_doubled_output_is_a_usage_error(argv, message, capsys):
    from cald_speech.student.cli import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cald_lm_output_is_required_in_either_spelling(capsys):
    from cald_speech.lm.cli import main

    assert main(["build", "a.txt"]) == 2
    assert "required: --output" in capsys.readouterr().err


PROBE = """
import sys
from {module} import main
for argv in ({help!r}, {bad!r}):
    try:
        main(argv)
    except SystemExit:
        pass
heavy = sorted(m for m in ("torch", "transformers", "speechbrain", "scipy") if m in sys.modules)
print("HEAVY", heavy)
"""


@pytest.mark.parametrize("module, prefix", [
    *[(t, []) for s, t in sorted(SCRIPTS.items()) if s != "cald-bench"],
    *[("cald_speech.bench.cli", [c]) for c in sorted(PARSERS)],
    ("cald_speech.bench.cli", []),
])
def test_help_and_usage_errors_import_no_model_code(module, prefix):
    sub = {"cald_speech.data.prepare": ["librispeech"], "cald_speech.data.synth.cli":
           ["librispeech"], "cald_speech.lm.cli": ["build"]}.get(module, [])
    code = PROBE.format(module=module, help=[*prefix, *sub, "--help"],
                        bad=[*prefix, *sub, "--no-such-option"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout
    assert "HEAVY []" in out, out[-500:]


def test_static_names_equal_the_registries():
    from cald_speech.cli import MIXER_NAMES
    from cald_speech.inference import precision, settings
    from cald_speech.mixers import available_mixers

    assert list(MIXER_NAMES) == available_mixers()
    assert settings.PRECISIONS == precision.PRECISIONS


# ------------------------------------------------------------ quiet by default, notes
@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    from cald_speech.testing import tiny_teacher

    folder = tmp_path_factory.mktemp("teacher")
    tiny_teacher().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("verbose", [False, True])
def test_library_loading_bars_only_with_verbose(teacher_folder, tmp_path, verbose):
    argv = [sys.executable, "-m", "cald_speech.student.cli", str(teacher_folder),
            "--output-dir", str(tmp_path / "s"), *(["--verbose"] if verbose else [])]
    env = {k: v for k, v in os.environ.items()   # as a fresh shell has it
           if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert ("Loading weights" in run.stderr) == verbose, run.stderr[-2000:]


def test_convert_explains_a_large_student_and_its_input_limit(teacher_folder, tmp_path,
                                                             capsys):
    from cald_speech.student.cli import main

    assert main([str(teacher_folder), "--output-dir", str(tmp_path / "s"), "--mixer",
                 "linformer"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("note: ")]
    assert any(re.search(r"the student has \d+\.\dx the teacher's parameters: its mixers "
                         r"hold [\d,]+, the attention they replace held [\d,]+", n)
               for n in notes), notes
    assert any("E and F of k x max_len = 256 x 4096 weights per layer" in n for n in notes)
    assert any(re.search(r"input limit: 4096 frames \(\d+ s of audio\) in one pass", n)
               for n in notes), notes
