"""Audio with NaN or Inf samples: never a silent wrong answer, never a poisoned run."""

import os

import numpy as np
import pytest
import soundfile as sf

from cald_speech.data.audio import load_audio
from cald_speech.data.librispeech import prepare_librispeech
from cald_speech.data.pipeline import audio_dataset
from cald_speech.data.tokenizer import CharTokenizer
from cald_speech.errors import AudioError
from cald_speech.inference import Transcriber, main
from cald_speech.student import convert, package_model
from cald_speech.testing import tiny_teacher

SR = 16000


def write(path, bad=None, at=1234, channels=1):
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((SR, channels))).astype("float32")
    if bad is not None:
        x[at, channels - 1] = bad
    sf.write(path, x, SR, subtype="FLOAT")
    return str(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("channels", [1, 2])
def test_readers_name_the_file_and_the_sample(tmp_path, bad, channels):
    path = write(tmp_path / "x.wav", bad, channels=channels)
    with pytest.raises(AudioError, match=r"x\.wav: holds 1 non-finite .* at sample 1234"):
        load_audio(path)
    load_audio(write(tmp_path / "ok.wav"))  # finite audio still reads


def test_in_memory_waveform_is_checked():
    asr = Transcriber(convert(tiny_teacher(head="ctc", vocab_size=29)).eval(), CharTokenizer())
    wav = np.zeros(SR, dtype="float32")
    wav[5] = np.nan
    with pytest.raises(AudioError, match="<waveform>: holds 1 non-finite"):
        asr.transcribe_waveform(wav)


def test_cli_reports_the_bad_file_keeps_going_and_exits_non_zero(tmp_path, capsys):
    folder = package_model(convert(tiny_teacher(head="ctc", vocab_size=29)).eval(),
                           tmp_path / "model", CharTokenizer())
    good, bad = write(tmp_path / "good.wav"), write(tmp_path / "bad.wav", np.nan)
    out = tmp_path / "out"
    assert main(["--model", folder, "--output-dir", str(out), "--no-progress", good, bad]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "bad.wav: holds 1 non-finite" in errors[0]
    assert os.listdir(out) == ["good.txt"]


def test_full_check_leaves_non_finite_files_out_of_the_manifest(tmp_path):
    folder = tmp_path / "dev-clean" / "3" / "4"
    folder.mkdir(parents=True)
    write(folder / "3-4-0000.wav")
    write(folder / "3-4-0001.wav", np.inf, at=SR - 1)
    (folder / "3-4.trans.txt").write_text("3-4-0000 GOOD\n3-4-0001 BAD\n")
    fast = prepare_librispeech(tmp_path, tmp_path / "a", splits=["dev-clean"])
    assert fast.splits["dev-clean"].kept == 2  # the header alone looks fine
    full = prepare_librispeech(tmp_path, tmp_path / "b", splits=["dev-clean"], check_audio="full")
    assert full.splits["dev-clean"].kept == 1
    assert full.splits["dev-clean"].skipped == {"unreadable_audio": 1}


def test_training_masks_the_item_instead_of_training_on_nan(tmp_path):
    paths = [write(tmp_path / "a.wav"), write(tmp_path / "b.wav", np.nan)]
    lines = ["ID,duration,wav,wrd"] + [f"u{i},1.0,{p},HI" for i, p in enumerate(paths)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    ds, _ = audio_dataset(tmp_path / "t.csv", required=("wrd",))
    items = {ds[i]["id"]: ds[i] for i in range(len(ds))}
    assert items["u0"]["ok"] and not items["u1"]["ok"]
    assert np.isfinite(items["u1"]["sig"].numpy()).all()
