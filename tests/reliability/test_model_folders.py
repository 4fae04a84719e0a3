"""Broken model folders are refused with a message naming the file; nothing loads at random.

Each damage is applied to a copy of a good folder (a transformers teacher with a CTC head,
or a converted student), then loaded by the library and by the console scripts.
"""

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cald_speech.data.tokenizer import CharTokenizer
from cald_speech.errors import DataError
from cald_speech.inference import main as transcribe_main
from cald_speech.student import convert, load_model, package_model
from cald_speech.student.cli import main as convert_main
from cald_speech.tasks.asr.model import load_ctc_model
from cald_speech.testing import tiny_teacher


def truncate(folder):
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return "model.safetensors", "damaged or truncated"


def no_weights(folder):
    (folder / "model.safetensors").unlink()
    return folder.name, "no weights file"


def config_list(folder):
    (folder / "config.json").write_text("[1, 2, 3]")
    return "config.json", "holds a list, not a model configuration"


def config_sizes(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"] *= 2
    (folder / "config.json").write_text(json.dumps(cfg))
    return "model.safetensors", "other shape"


def drop_tensor(folder):
    f = folder / "model.safetensors"
    state = load_file(str(f))
    key = next(k for k in state if k.endswith("layers.0.attention.k_proj.weight"))
    del state[key]
    save_file(state, str(f), metadata={"format": "pt"})
    return "model.safetensors", "lacks 1 tensor(s) the model needs"


DAMAGE = [truncate, no_weights, config_list, config_sizes, drop_tensor]


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher") / "model"
    package_model(tiny_teacher(head="ctc", vocab_size=29).eval(), folder, CharTokenizer())
    return folder


def damaged(src, tmp_path, damage):
    folder = tmp_path / "broken"
    shutil.copytree(src, folder)
    name, message = damage(folder)
    return folder, name, message


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_library_refuses_a_broken_teacher_folder(teacher_folder, tmp_path, damage):
    folder, name, message = damaged(teacher_folder, tmp_path, damage)
    for load in (load_model, lambda f: load_ctc_model(f, 29), lambda f: load_ctc_model(f, 31)):
        with pytest.raises(DataError, match=re.escape(message)) as err:
            load(folder)
        assert name in str(err.value)


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_console_scripts_refuse_a_broken_teacher_folder(teacher_folder, tmp_path, damage,
                                                        capsys):
    folder, name, message = damaged(teacher_folder, tmp_path, damage)
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, torch.zeros(8000).numpy(), 16000)
    assert convert_main([str(folder), str(tmp_path / "student")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err and name in err
    assert not (tmp_path / "student").exists()
    assert transcribe_main(["--model", str(folder), "--no-progress", str(wav)]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err and name in err


def test_a_new_ctc_head_is_the_only_tensor_allowed_to_be_new(teacher_folder, tmp_path):
    """A pretrained encoder gets a new head for fine-tuning; nothing else may be new."""
    encoder = tmp_path / "encoder"
    tiny_teacher().save_pretrained(encoder)
    model = load_ctc_model(encoder, 31)
    same = load_model(encoder)
    assert model.lm_head.out_features == 31
    assert torch.equal(model.wav2vec2.encoder.layers[0].attention.k_proj.weight,
                       same.encoder.layers[0].attention.k_proj.weight)
    drop_tensor(encoder)
    with pytest.raises(DataError, match="lacks 1 tensor"):
        load_ctc_model(encoder, 31)


@pytest.mark.parametrize("edit", ["drop_mixers", "drop_source_class", "bad_mixer",
                                  "not_a_mapping"])
def test_student_with_an_incomplete_cald_section(tmp_path, edit, capsys):
    folder = Path(package_model(convert(tiny_teacher(head="ctc", vocab_size=29)).eval(),
                                tmp_path / "student", CharTokenizer()))
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    if edit == "drop_mixers":
        del cfg["cald"]["mixers"]
    elif edit == "drop_source_class":
        del cfg["cald"]["source_class"]
    elif edit == "bad_mixer":
        cfg["cald"]["mixers"][0] = {"hidden_size": 8}
    else:
        cfg["cald"] = ["bimamba2"]
    path.write_text(json.dumps(cfg))
    with pytest.raises(DataError, match=r"config\.json: (the 'cald' section lacks|does not "
                                        r"describe a student)"):
        load_model(folder)
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, torch.zeros(8000).numpy(), 16000)
    assert transcribe_main(["--model", str(folder), "--no-progress", str(wav)]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "config.json" in err


def test_truncated_student_weights(tmp_path):
    folder = Path(package_model(convert(tiny_teacher(head="ctc", vocab_size=29)).eval(),
                                tmp_path / "student", CharTokenizer()))
    truncate(folder)
    with pytest.raises(DataError, match="model.safetensors"):
        load_model(folder)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_saved_models_and_manifests_respect_the_umask(tmp_path, umask):
    from cald_speech.data.manifest import write_csv_atomic, write_json_atomic
    from cald_speech.tasks.intent.labels import LabelMaps
    from cald_speech.tasks.intent.model import IntentHead, IntentModel

    old = os.umask(umask)
    try:
        package_model(tiny_teacher(head="ctc", vocab_size=29).eval(),
                      tmp_path / "teacher", CharTokenizer())
        package_model(convert(tiny_teacher(head="ctc", vocab_size=29)).eval(),
                      tmp_path / "student", CharTokenizer())
        labels = LabelMaps({"alarm_set": ("alarm", "set")})
        head = IntentHead(tiny_teacher().config.hidden_size, {"intent": 1})
        IntentModel(tiny_teacher(), head, labels).save_pretrained(tmp_path / "intent")
        write_csv_atomic(tmp_path / "m" / "train.csv", ["ID"], [{"ID": "u"}])
        write_json_atomic(tmp_path / "m" / "state.json", {"a": 1})
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 12
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
