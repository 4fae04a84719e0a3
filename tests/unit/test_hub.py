"""Hub ids resolve through the local Hugging Face cache, offline (cald_speech.hub).

The fixture writes a tiny model into a temporary ``HF_HOME`` exactly as huggingface_hub
lays out its cache: ``hub/models--org--name/{blobs,refs/main,snapshots/<commit>/}``,
the snapshot files being relative symlinks to content-addressed blobs.
"""

import hashlib
import os
import shutil
import socket
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from cald_speech.errors import DataError
from cald_speech.hub import cached_repo_ids, hub_cache_dir, resolve_model_source, split_hub_id
from cald_speech.student import Student, load_model
from cald_speech.student.cli import main as convert_main
from cald_speech.testing import tiny_teacher

REPO = "facebook/wav2vec2-base-960h"
COMMIT = "22aad52d435eb6dbaf354bdad9b0da84ce7d6156"


def cache_repo(hub_dir, repo_id, folder, commit=COMMIT, ref="main"):
    """Puts the files of ``folder`` into the hub cache ``hub_dir`` as huggingface_hub does.

    Returns the snapshot folder.
    """
    repo = Path(hub_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs" / ref).write_text(commit)  # no newline, like huggingface_hub
    return snapshot


@pytest.fixture
def no_network(monkeypatch):
    """Records (and refuses) every attempt to open a connection."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture
def hf_home(tmp_path, monkeypatch, no_network):
    """A temporary ``HF_HOME`` whose cache holds ``REPO``: a tiny CTC model, 32 outputs."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    src = tmp_path / "saved"
    tiny_teacher(head="ctc", vocab_size=32).save_pretrained(src)
    cache_repo(home / "hub", REPO, src)
    yield home
    assert no_network == [], "something tried to reach the network"


def test_hub_id_resolves_to_the_cached_snapshot(hf_home):
    snapshot = hf_home / "hub" / "models--facebook--wav2vec2-base-960h" / "snapshots" / COMMIT
    assert (snapshot / "config.json").is_symlink()  # the fixture is a real cache layout
    assert hub_cache_dir() == hf_home / "hub"
    assert resolve_model_source(REPO) == snapshot
    assert resolve_model_source(f"{REPO}@main") == snapshot
    assert resolve_model_source(f"{REPO}@{COMMIT}") == snapshot
    assert cached_repo_ids() == [REPO]


def test_offline_flag_is_neither_needed_nor_in_the_way(hf_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model_source(REPO).name == COMMIT
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_source(REPO).name == COMMIT


def test_the_environment_is_read_at_call_time(hf_home, tmp_path, monkeypatch):
    assert resolve_model_source(REPO).name == COMMIT
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    with pytest.raises(DataError, match="nor in the local Hugging Face cache") as info:
        resolve_model_source(REPO)
    assert str(info.value).startswith(str(tmp_path / "empty_home" / "hub"))
    # HF_HUB_CACHE names the hub folder itself and wins over HF_HOME
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    assert resolve_model_source(REPO).name == COMMIT
    with pytest.raises(DataError, match=f"HF_HUB_CACHE={hf_home / 'hub'}"):
        resolve_model_source("facebook/hubert-large-ls960-ft")


def test_load_model_takes_a_hub_id(hf_home):
    model = load_model(REPO)
    assert type(model).__name__ == "Wav2Vec2ForCTC"
    assert model.lm_head.out_features == 32
    expected = tiny_teacher(head="ctc", vocab_size=32).state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_convert_cli_takes_a_hub_id(hf_home, tmp_path, capsys):
    dst = tmp_path / "student"
    assert convert_main([REPO, "--output-dir", str(dst), "--mixer", "bimamba2"]) == 0
    assert f"student in {dst}" in capsys.readouterr().out
    student = load_model(dst)
    assert isinstance(student, Student)
    assert student.cald["source_class"] == "Wav2Vec2ForCTC"
    assert not (dst / "config.json").is_symlink()


def test_uncached_id_fails_at_once_saying_where_it_looked(hf_home, tmp_path, capsys):
    repo = "facebook/hubert-large-ls960-ft"
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        resolve_model_source(repo, "teacher")
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert "\n" not in msg
    assert str(hf_home / "hub" / "models--facebook--hubert-large-ls960-ft") in msg
    assert f"hf download {repo}" in msg and f"huggingface-cli download {repo}" in msg
    assert f"HF_HOME={hf_home}" in msg and "local model folder" in msg
    assert msg.startswith(str(hf_home)) and "teacher 'facebook/hubert" in msg
    assert "did you mean" not in msg  # nothing cached is close to it
    # the command line: one error line, exit status 1, nothing written
    start = time.monotonic()
    assert convert_main([repo, "--output-dir", str(tmp_path / "out")]) == 1
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"hf download {repo}" in err
    assert not (tmp_path / "out").exists()


def test_typo_gets_the_cached_near_matches(hf_home):
    with pytest.raises(DataError, match=r"did you mean 'facebook/wav2vec2-base-960h'\?"):
        resolve_model_source("facebook/wav2vec2-base-96h")
    with pytest.raises(DataError, match="not at revision 'v2'") as info:
        resolve_model_source(f"{REPO}@v2")
    assert f"hf download {REPO} --revision v2" in str(info.value)


def test_a_local_folder_wins_over_the_hub_id(hf_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_teacher(head="model").save_pretrained(tmp_path / REPO)
    assert resolve_model_source(REPO) == Path(REPO)
    assert type(load_model(REPO)).__name__ == "Wav2Vec2Model"  # not the cached ForCTC


@pytest.mark.parametrize("source", ["/no/such/model", "./facebook/x", "wav2vec2-base",
                                    "a--b/c", "org/name/extra", "org/name@"])
def test_what_is_no_hub_id_stays_a_missing_folder(hf_home, source):
    assert split_hub_id(source) is None
    assert resolve_model_source(source) == Path(source)
    with pytest.raises(DataError, match="no such model folder"):
        load_model(source)


def test_recipe_sources_resolve(hf_home):
    from cald_speech.tasks.asr.model import load_ctc_model
    from cald_speech.tasks.modes import build_models, check_folder

    snapshot = resolve_model_source(REPO)
    assert check_folder(REPO, "teacher") == str(snapshot)
    with pytest.raises(DataError, match="teacher 'facebook/wav2vec2-base-96h'.*did you mean"):
        check_folder("facebook/wav2vec2-base-96h", "teacher")
    hp = {"mode": "target", "teacher_source": REPO, "mixer": {"name": "bimamba2"}}
    model, teacher, guidance, _ = build_models(hp, partial(load_ctc_model, vocab_size=32))
    assert type(teacher).__name__ == "Wav2Vec2ForCTC" and isinstance(model, Student)
    assert guidance.mode == "target"


def test_bench_resolves_models_before_any_work(hf_home, tmp_path, capsys):
    from cald_speech.bench import speed, wer

    out = tmp_path / "bench"
    missing = "facebook/hubert-large-ls960-ft"
    assert speed.main(["--model", REPO, missing, "--output-dir", str(out)]) == 1
    assert f"hf download {missing}" in capsys.readouterr().err
    assert not out.exists()
    # the teacher is checked before the CSV is read
    assert wer.main(["--teacher", missing, "--student", REPO, "--csv",
                     str(tmp_path / "no.csv"), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"hf download {missing}" in err and "no.csv" not in err
