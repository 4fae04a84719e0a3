"""Every console script follows one convention (cald_speech.cli): --version, exit status,
error lines."""

import importlib
import re
from pathlib import Path

import pytest

from cald_speech import __version__

SETUP = Path(__file__).resolve().parents[2] / "setup.py"
SCRIPTS = dict(re.findall(r'"(cald-[a-z]+)=([\w.]+:main)"', SETUP.read_text()))
# the python -m tools and the benchmarks behind cald-bench
MODULES = {
    "python -m cald_speech.pretrain": "cald_speech.pretrain:main",
    "python -m cald_speech.data.pack": "cald_speech.data.pack:main",
    "python -m cald_speech.frontend": "cald_speech.frontend:main",
    "python -m cald_speech.demo": "cald_speech.demo.pipeline:main",
    **{f"cald-bench {c}": f"cald_speech.bench.{c}:main"
       for c in ("wer", "speed", "longform", "compare", "runs", "mixers")},
}


def _main(target):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def test_every_console_script_is_listed():
    assert set(SCRIPTS) == {"cald-synth", "cald-prepare", "cald-convert", "cald-transcribe",
                            "cald-bench", "cald-lm"}


@pytest.mark.parametrize("prog, target", sorted({**SCRIPTS, **MODULES}.items()))
def test_version_and_usage_errors(prog, target, capsys):
    main = _main(target)
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"{prog} {__version__}", out
    command = ["wer"] if prog == "cald-bench" else []   # cald-bench: a command's options
    assert main([*command, "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"^[\w .-]+: error: ", err, re.M), err


@pytest.mark.parametrize("prog, argv", [
    ("cald-convert", ["{missing}", "{tmp}/out"]),
    ("cald-prepare", ["librispeech", "{missing}", "{tmp}/out"]),
    ("cald-bench", ["runs", "{missing}"]),
    ("cald-bench", ["compare", "--a", "{missing}", "--b", "{missing}"]),
    ("cald-transcribe", ["--model", "{missing}", "{tmp}/a.wav"]),
    ("cald-lm", ["build", "{missing}", "--out", "{tmp}/lm.arpa"]),
])
def test_missing_input_is_exit_1_naming_the_path(prog, argv, tmp_path, capsys):
    missing = str(tmp_path / "missing-folder")
    argv = [a.format(missing=missing, tmp=tmp_path) for a in argv]
    assert _main(SCRIPTS[prog])(argv) == 1
    err = capsys.readouterr().err
    assert f"{prog.split()[0]}" in err and ": error: " in err and "missing-folder" in err
    assert "Traceback" not in err
