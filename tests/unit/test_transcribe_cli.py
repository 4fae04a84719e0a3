"""cald-transcribe's command line: option errors before any model loads, and one output
rule for any number of files."""

import json

import numpy as np
import pytest
import soundfile as sf

from cald_speech.data.tokenizer import CharTokenizer
from cald_speech.inference.cli import main
from cald_speech.student import package_model
from cald_speech.testing import tiny_teacher


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tok = CharTokenizer()
    folder = tmp_path_factory.mktemp("run") / "model"
    package_model(tiny_teacher(head="ctc", vocab_size=len(tok)), folder, tok)
    return folder


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    paths = []
    for name, seconds in (("jfk", 1.2), ("two", 0.8)):
        paths.append(str(root / f"{name}.flac"))
        sf.write(paths[-1], (0.1 * rng.standard_normal(int(16000 * seconds))).astype("float32"),
                 16000)
    return paths


def test_srt_without_timestamps_is_a_usage_error_and_writes_nothing(model, wavs, tmp_path,
                                                                     capsys):
    out = tmp_path / "out"
    assert main([wavs[0], "--model", str(model), "--format", "srt", "--no-timestamps",
                 "--output-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    err = captured.err.strip()
    assert err.count("\n") == 0 and err.startswith("cald-transcribe: error: --format srt ")
    assert "--no-timestamps" in err and "fix:" in err


def test_srt_without_timestamps_is_refused_in_help():
    from cald_speech.inference.cli import build_parser

    assert "not with --no-timestamps" in " ".join(build_parser().format_help().split())


@pytest.mark.parametrize("fmt", ["txt", "json", "srt"])
def test_stdout_follows_one_rule_for_any_number_of_files(model, wavs, fmt, capsys):
    assert main([wavs[0], "--model", str(model), "--format", fmt, "--no-progress"]) == 0
    one = capsys.readouterr().out
    assert main([*wavs, "--model", str(model), "--format", fmt, "--no-progress"]) == 0
    two = capsys.readouterr().out
    assert two.startswith(one) and len(two) > len(one)   # the same record, then the next
    if fmt == "txt":
        assert [line.split("\t")[0] for line in two.splitlines()] == wavs
    elif fmt == "json":
        assert [json.loads(line)["path"] for line in two.splitlines()] == wavs
        assert json.loads(one)["path"] == wavs[0]     # one file: a valid JSON document too
    else:
        assert [line for line in two.splitlines() if line.startswith("==> ")] == [
            f"==> {w} <==" for w in wavs]


@pytest.mark.parametrize("fmt", ["txt", "json", "srt"])
def test_output_dir_holds_each_format_plain(model, wavs, fmt, tmp_path, capsys):
    assert main([*wavs, "--model", str(model), "--format", fmt, "--no-progress",
                 "--output-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""
    text = (tmp_path / f"jfk.{fmt}").read_text()
    if fmt == "json":
        assert json.loads(text)["path"] == wavs[0]
    else:
        assert "==>" not in text and wavs[0] not in text


@pytest.mark.parametrize("argv, option", [
    (["--window-s", "1"], "--window-s 1 must be longer than twice --overlap-s 2"),
    (["--window-s", "0"], "--window-s must be positive"),
    (["--overlap-s", "-1"], "--overlap-s must be >= 0"),
    (["--norm-window-s", "-1"], "--norm-window-s must be >= 0"),
])
def test_option_errors_are_usage_errors_not_model_errors(model, wavs, argv, option, capsys):
    assert main([wavs[0], "--model", str(model), *argv]) == 2
    err = capsys.readouterr().err
    assert option in err and "cannot load" not in err


def test_a_run_folder_names_its_model_folder(model, wavs, capsys):
    assert main([wavs[0], "--model", str(model.parent)]) == 1
    err = capsys.readouterr().err
    assert f"no config.json in the folder (fix: give the model folder inside it: {model})" in err
