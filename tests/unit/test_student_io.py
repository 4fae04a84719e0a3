"""Saving, loading and running students (cald_speech.student) and the cald-convert CLI."""

import json
import logging
import shutil
import socket
from importlib.metadata import entry_points

import pytest
import torch
from safetensors.torch import load_file, save_file

from cald_speech.errors import ConfigError, DataError
from cald_speech.student import (
    Student,
    convert,
    encoder_layers,
    load_model,
    parameter_table,
)
from cald_speech.student.cli import main
from cald_speech.testing import PUBLIC_SHAPES, tiny_teacher

LENGTHS = [1600, 900]


def _batch():
    g = torch.Generator().manual_seed(1)
    wav = torch.randn(len(LENGTHS), max(LENGTHS), generator=g)
    mask = (torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    return wav * mask, mask


def _outputs(model):
    wav, mask = _batch()
    with torch.no_grad():
        out = model(wav, attention_mask=mask, output_hidden_states=True)
    main_out = out.logits if "logits" in out else out.last_hidden_state
    return [main_out, *out.hidden_states]


@pytest.fixture
def offline(monkeypatch):
    """Any network access fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading a model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize(
    "shape, head, mixer, keep",
    [
        ("wav2vec2-base", "ctc", "bimamba2", []),
        ("wav2vec2-large-lv60", "model", "bimamba2", [0]),
        ("hubert-large-ll60k", "classification", "bimamba2_shared", []),
        ("wavlm-base-plus", "ctc", "bimamba2", [1]),
        ("wavlm-base-plus", "model", "attention", []),
    ],
)
def test_save_load_gives_identical_outputs(tmp_path, offline, shape, head, mixer, keep):
    teacher = tiny_teacher(shape, head=head, feat_extract_norm="layer")
    student = convert(teacher, mixer=mixer, init="attention", keep_attention=keep).eval()
    student.save_pretrained(tmp_path)
    del teacher
    loaded = load_model(tmp_path)
    assert isinstance(loaded, Student) and not loaded.training
    assert loaded.layer_kinds() == student.layer_kinds()
    assert loaded.cald == student.cald
    assert loaded.config._attn_implementation == student.config._attn_implementation
    before, after = _outputs(student), _outputs(loaded)
    assert len(before) == len(after) == student.config.num_hidden_layers + 2
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    # the weights file holds exactly the wrapped model's state
    assert set(load_file(tmp_path / "model.safetensors")) == set(student.model.state_dict())


def test_saved_precision_is_kept(tmp_path):
    teacher = tiny_teacher("wav2vec2-large-lv60", feat_extract_norm="layer").double()
    student = convert(teacher, mixer="bimamba2", keep_attention=[0]).eval()
    student.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    wav, mask = _batch()
    with torch.no_grad():
        a = student(wav.double(), attention_mask=mask).last_hidden_state
        b = loaded(wav.double(), attention_mask=mask).last_hidden_state
    assert torch.equal(a, b)


def test_folder_layout(tmp_path):
    teacher = tiny_teacher("wav2vec2-large-lv60", head="ctc")
    convert(teacher, mixer="bimamba2", keep_attention=[1], chunk_size=8).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "wav2vec2"
    assert config["architectures"] == ["Wav2Vec2ForCTC"]
    assert config["do_stable_layer_norm"] is True and config["hidden_size"] == 32
    cald = config["cald"]
    assert cald["source_class"] == "Wav2Vec2ForCTC"
    assert cald["init"] == "attention" and cald["keep_attention"] == [1]
    assert cald["mixers"][1] is None
    assert cald["mixers"][0]["name"] == "bimamba2" and cald["mixers"][0]["hidden_size"] == 32
    # Execution settings stay with the machine, not the model; the file is strict JSON.
    assert "chunk_size" not in cald["mixers"][0] and "impl" not in cald["mixers"][0]
    assert cald["mixers"][0]["dt_limit"] == [0.0, None]

    def no_constants(name):
        raise AssertionError(f"config.json holds {name}: not strict JSON")
    json.loads((tmp_path / "config.json").read_text(), parse_constant=no_constants)


def test_execution_settings_are_not_saved_and_old_folders_load(tmp_path, caplog):
    teacher = tiny_teacher(head="ctc")
    student = convert(teacher, mixer="bimamba2", impl="torch", chunk_size=8,
                      dt_limit=(0.001, 0.5)).eval()
    student.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["cald"]["mixers"][0]["dt_limit"] == [0.001, 0.5]
    # A folder written before execution settings were left out: impl, chunk_size and an
    # Infinity dt_limit in config.json. It loads, with the settings ignored.
    for mixer in config["cald"]["mixers"]:
        mixer.update(impl="torch", chunk_size=8, dt_limit=[0.0, float("inf")])
    (tmp_path / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.INFO, logger="cald_speech.mixers"):
        loaded = load_model(tmp_path)
    assert any("ignoring saved execution options" in r.getMessage() for r in caplog.records)
    for layer in loaded.model.wav2vec2.encoder.layers:
        mixer = layer.attention.mixer
        assert mixer.execution_config() == {"impl": None, "chunk_size": None}
        assert mixer.fwd.impl is None and mixer.fwd.chunk_size is None
        assert mixer.fwd.dt_limit == (0.0, float("inf"))


def test_tokenizer_and_label_files_travel(tmp_path, offline):
    src, dst, again = tmp_path / "teacher", tmp_path / "student", tmp_path / "again"
    tiny_teacher(head="ctc").save_pretrained(src)
    files = {
        "vocab.json": '{"<pad>": 0, "a": 1}',
        "tokenizer_config.json": "{}",
        "special_tokens_map.json": "{}",
        "preprocessor_config.json": '{"sampling_rate": 16000}',
        "label_map.json": '{"greet": 0}',
        "tokenizer.model": "sentencepiece bytes",
    }
    for name, text in files.items():
        (src / name).write_text(text)
    (src / "notes.txt").write_text("not a model file")
    student = convert(src, mixer="bimamba2")
    student.save_pretrained(dst)
    for name, text in files.items():
        assert (dst / name).read_text() == text, name
    assert not (dst / "notes.txt").exists()
    load_model(dst).save_pretrained(again)  # a loaded student carries them on
    assert all((again / name).is_file() for name in files)


def test_teacher_folder_loads_through_the_same_entry_point(tmp_path, offline):
    teacher = tiny_teacher("hubert-large-ll60k", head="ctc")
    teacher.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert type(loaded).__name__ == "HubertForCTC" and not isinstance(loaded, Student)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(teacher), _outputs(loaded)))
    with pytest.raises(ConfigError, match="plain transformers model"):
        Student.from_pretrained(tmp_path)


def test_student_stands_in_for_the_teacher():
    teacher = tiny_teacher(head="ctc")
    student = convert(teacher, mixer="bimamba2")
    assert student.config is student.model.config
    assert student.main_input_name == "input_values"
    student.freeze_feature_encoder()
    assert not any(p.requires_grad for p in student.model.wav2vec2.feature_extractor.parameters())
    lengths = student._get_feat_extract_output_lengths(torch.tensor([1600]))
    expected = teacher._get_feat_extract_output_lengths(torch.tensor([1600]))
    assert lengths.tolist() == expected.tolist()
    with pytest.raises(AttributeError):
        student.no_such_attribute  # noqa: B018


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such model folder"):
        load_model(tmp_path / "missing")
    with pytest.raises(DataError, match="no config.json"):
        load_model(tmp_path)
    good = tmp_path / "good"
    convert(tiny_teacher(), mixer="bimamba2").save_pretrained(good)

    no_weights = tmp_path / "no_weights"
    shutil.copytree(good, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(DataError, match="no weights file"):
        load_model(no_weights)

    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read the weights"):
        load_model(truncated)

    mismatched = tmp_path / "mismatched"
    shutil.copytree(good, mismatched)
    state = load_file(mismatched / "model.safetensors")
    state.pop(next(k for k in state if ".mixer." in k))
    save_file(state, str(mismatched / "model.safetensors"))
    with pytest.raises(DataError, match="do not match the config"):
        load_model(mismatched)

    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_model(broken)

    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(ConfigError, match="unsupported architecture 'BertModel'"):
        load_model(alien)


def test_parameter_table_accounts_for_every_parameter():
    teacher = tiny_teacher("wavlm-base-plus", head="classification", num_hidden_layers=3)
    student = convert(teacher, mixer="bimamba2", keep_attention=[2])
    rows = parameter_table(teacher, student)
    total = rows[-1]
    assert total["teacher"] == sum(p.numel() for p in teacher.parameters())
    assert total["student"] == sum(p.numel() for p in student.parameters())
    by = {(r["kind"], r["status"]): r for r in rows[:-1]}
    for (kind, status), r in by.items():
        if status == "transferred":
            assert r["teacher"] == r["student"] > 0, kind
    assert by[("mixers", "new")]["teacher"] == 0 and by[("mixers", "new")]["student"] > 0
    assert by[("self-attention", "dropped")]["student"] == 0
    assert {"CNN feature encoder", "feed-forward", "layer norms", "task head"} <= {
        kind for kind, _ in by
    }


def test_cli_converts_a_folder(tmp_path, capsys):
    src, dst = tmp_path / "teacher", tmp_path / "student"
    teacher = tiny_teacher("wav2vec2-large-lv60", head="ctc")
    teacher.save_pretrained(src)
    (src / "vocab.json").write_text('{"<pad>": 0}')
    argv = [str(src), str(dst), "--mixer", "bimamba2", "--init", "attention",
            "--keep-attention", "0", "--mixer-opt", "chunk_size=16", "--mixer-opt", "impl=torch"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for word in ("module kind", "transferred", "kept", "dropped", "new", "total"):
        assert word in out
    student = load_model(dst)
    assert student.layer_kinds() == ["attention", "mixer:bimamba2"]
    assert "chunk_size" not in student.cald["mixers"][1]
    assert "not saved with the model" in out and "chunk_size, impl" in out
    assert (dst / "vocab.json").is_file()
    layer = encoder_layers(student.model)[1].attention.mixer
    out_proj = encoder_layers(teacher)[1].attention.out_proj
    assert torch.equal(layer.fwd.out_proj.weight, out_proj.weight)

    # an existing student is not overwritten without --overwrite
    assert main(argv) == 1        # an input that cannot be used (cald_speech.cli)
    assert "already holds a model" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--keep-attention", "7"], "layer 7 is out of range"),
        (["--mixer", "nope"], "argument --mixer: invalid choice: 'nope'"),
        (["--mixer-opt", "d_state=3"], "attention"),
        (["--keep-attention", "x"], "argument --keep-attention: invalid value 'x'"),
        (["--mixer-opt", "novalue"], "key=value"),
    ],
)
def test_cli_rejects_bad_options_before_loading(tmp_path, capsys, monkeypatch, extra, message):
    src, dst = tmp_path / "teacher", tmp_path / "student"
    tiny_teacher().save_pretrained(src)

    def no_load(*args, **kwargs):
        raise AssertionError("weights loaded before options were checked")

    monkeypatch.setattr("cald_speech.student.io.load_model", no_load)
    assert main([str(src), "--output-dir", str(dst), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not dst.exists()


def test_cli_rejects_missing_and_student_sources(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert "no such model folder" in capsys.readouterr().err
    convert(tiny_teacher(), mixer="bimamba2").save_pretrained(tmp_path / "student")
    assert main([str(tmp_path / "student"), str(tmp_path / "out")]) == 2
    assert "already holds a student" in capsys.readouterr().err


def test_console_script_is_installed():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    if "cald-convert" not in scripts:
        pytest.skip("cald-speech is not installed (pip install -e .)")
    assert scripts["cald-convert"] == "cald_speech.student.cli:main"


def test_public_shapes_are_the_documented_ones():
    assert set(PUBLIC_SHAPES) == {
        "wav2vec2-base", "wav2vec2-large-lv60", "hubert-large-ll60k", "wavlm-base-plus"
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_unusable_device_is_named_not_blamed_on_the_weights(tmp_path):
    convert(tiny_teacher()).save_pretrained(tmp_path / "s")
    tiny_teacher().save_pretrained(tmp_path / "t")
    for folder in ("s", "t"):
        with pytest.raises(ConfigError, match="device 'cuda' cannot be used") as err:
            load_model(tmp_path / folder, device="cuda")
        assert "--device cpu" in str(err.value) and "weights" not in str(err.value)
