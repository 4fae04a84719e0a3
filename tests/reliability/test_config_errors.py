"""Configuration errors fail before any compute, with a message that says the fix."""

from pathlib import Path

import pytest

from cald_speech.tasks.asr.brain import CTCBrain
from cald_speech.tasks.asr.recipe import run_asr
from cald_speech.tasks.recipe import recipe_entry

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "LibriSpeech" / "ASR"


@pytest.fixture()
def no_compute(monkeypatch):
    """Fails the test if a recipe gets as far as training."""
    def fit(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(CTCBrain, "fit", fit)


def run(tmp_path, hparams, *extra, writes=False):
    out = tmp_path / "out"
    argv = [str(hparams), "--data_folder", str(tmp_path / "corpus"), "--output_folder",
            str(out), *extra]
    with pytest.raises(SystemExit) as exc:
        recipe_entry(run_asr, argv)
    if not writes:
        assert not out.exists(), "nothing may be written before the configuration is checked"
    return str(exc.value.code)


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, no_compute):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nbatch_size: [8\n")
    msg = run(tmp_path, bad)
    assert msg.startswith("error: ") and f"{bad}, line 3: YAML syntax error" in msg


def test_override_syntax_error_is_named_as_such(tmp_path, no_compute):
    msg = run(tmp_path, RECIPE / "hparams" / "finetune.yaml", "--train_splits", "[a, b")
    assert "YAML syntax error in the command-line overrides" in msg


@pytest.mark.parametrize("option, value, kind", [
    ("batch_size", "abc", "a positive integer"),
    ("batch_size", "0", "a positive integer"),
    ("lr_encoder", "fast", "a positive number"),
    ("number_of_epochs", "2.5", "a positive integer"),
    ("dynamic_batching", "maybe", "true or false"),
    ("train_splits", "train-clean-100", "a list of names, e.g. [train-clean-100]"),
    ("max_duration", "-1", "a positive number or null"),
])
def test_override_of_the_wrong_type_fails_before_the_model_loads(tmp_path, no_compute,
                                                                  option, value, kind):
    msg = run(tmp_path, RECIPE / "hparams" / "finetune.yaml", f"--{option}", value)
    assert f"command line: --{option} must be {kind}, got" in msg


def test_a_number_that_yaml_reads_as_text_gets_the_spelling_that_works(tmp_path, no_compute):
    msg = run(tmp_path, RECIPE / "hparams" / "finetune.yaml", "--lr_encoder", "3e-5")
    assert "got '3e-5' (str); YAML reads 3e-5 as text" in msg and "e.g. 3.0e-05" in msg


def test_wrong_type_in_the_file_names_the_file(tmp_path, no_compute):
    text = (RECIPE / "hparams" / "finetune.yaml").read_text()
    bad = tmp_path / "finetune.yaml"
    bad.write_text(text.replace("batch_size: 8\n", "batch_size: eight\n"))
    msg = run(tmp_path, bad, "--model_config", str(RECIPE.parents[2] / "hparams" / "models"
                                                  / "tiny_wav2vec2.yaml"), writes=True)
    assert f"{bad}: batch_size must be a positive integer, got 'eight'" in msg


def test_shipped_hparams_pass_the_checks():
    from hyperpyyaml import load_hyperpyyaml

    from cald_speech.tasks.hparams import OPTION_KINDS, check_types

    files = sorted(RECIPE.parents[1].glob("*/*/hparams/*.yaml"))
    assert len(files) == 6
    for path in files:
        text = path.read_text()
        placeholders = {line.split(":")[0]: "x" for line in text.splitlines()
                        if "!PLACEHOLDER" in line}
        with open(path) as f:
            hp = load_hyperpyyaml(f, placeholders)
        assert len(set(hp) & set(OPTION_KINDS)) >= 20, path
        check_types(hp, str(path))


def test_transcribe_output_dir_that_is_a_file_fails_before_loading(tmp_path, capsys):
    from cald_speech.inference import main

    target = tmp_path / "taken"
    target.write_text("x")
    assert main(["--model", str(tmp_path / "no-model"), "--output-dir", str(target),
                 "--no-progress", str(tmp_path / "a.wav")]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {target} is a file, not a folder" in err and "Traceback" not in err
    assert target.read_text() == "x"
