"""The offline corpus synthesizer: layouts, determinism, held-out splits, bad input.

Each test is marked with what it needs: the shared data (``shared_data``) and the
text-to-speech engines (``synth_engines``); ``conftest.py`` skips it, saying why, where
they are missing. The tests of voices and of bad input need neither.
"""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cald_speech.data.synth import (
    METADATA_FILE,
    SynthOptions,
    assign_voices,
    default_data_dir,
    main,
    synthesize_librispeech,
    synthesize_slurp,
    voice_weights,
)
from cald_speech.data.text import normalize_text
from cald_speech.data.voices import list_voices, select_voices
from cald_speech.errors import ConfigError, DataError, ToolError

DATA = default_data_dir()
LS_SPLITS = ("train-clean-100", "dev-clean", "test-clean")
ALLOWED_WORDS = re.compile(r"^[A-Z']+(?: [A-Z']+)*$")


def _read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _eval_lj_words():
    lines = (DATA / "eval" / "text" / "lj_heldout.tsv").read_text().splitlines()
    return {normalize_text(line.split("\t", 1)[1]) for line in lines}


def _trans(root):
    """split -> {utt_id: words} from all trans.txt files."""
    out = {}
    for split in LS_SPLITS:
        out[split] = {}
        for t in sorted((root / "LibriSpeech" / split).glob("*/*/*.trans.txt")):
            for line in t.read_text().splitlines():
                uid, words = line.split(" ", 1)
                out[split][uid] = words
    return out


# Small corpora shared by the tests of this module (all three engines).
LS_ARGS = dict(n_train=8, n_dev=2, n_test=2, seed=5, progress=False, noise_prob=0.5,
               reverb_prob=0.5, telephone_prob=0.3)


@pytest.fixture(scope="module")
def ls_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls") / "corpus"
    summary = synthesize_librispeech(root, jobs=2, **LS_ARGS)
    return root, summary


@pytest.fixture(scope="module")
def slurp_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurp") / "corpus"
    summary = synthesize_slurp(root, n_train=6, n_dev=2, n_test=2, seed=2, jobs=1,
                               far_field_prob=0.5, recordings_per_record=2, progress=False)
    return root, summary


# --------------------------------------------------------------------------- voices


def test_voice_identities():
    voices = list_voices()
    assert len(voices) >= 20
    assert {v.engine for v in voices} == {"espeak", "flite", "festival"}
    assert len({v.speaker for v in voices}) == len(voices)
    assert len({v.name for v in voices}) == len(voices)
    assert len({(v.base, v.shift, v.tempo, v.bass, v.treble) for v in voices}) == len(voices)
    flite = {v.voice for v in voices if v.engine == "flite"}
    assert flite == {"kal", "kal16", "awb", "rms", "slt"}
    festival = {v.voice for v in voices if v.engine == "festival"}
    assert festival == {"kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"}


def test_weights_favour_flite_and_festival():
    voices = list_voices()
    w = voice_weights(voices, SynthOptions().engine_weights)
    share = {e: w[[v.engine == e for v in voices]].sum() for e in ("espeak", "flite", "festival")}
    assert share["flite"] > share["espeak"] and share["festival"] > share["espeak"]
    assert abs(sum(share.values()) - 1) < 1e-9


def test_assign_voices_holds_out_and_spreads_engines():
    voices = list_voices()
    parts = assign_voices(voices, [("test", 6), ("dev", 4)], seed=3)
    test, dev, train = set(parts["test"]), set(parts["dev"]), set(parts[None])
    assert len(test) == 6 and len(dev) == 4 and len(train) == len(voices) - 10
    assert not (test & train) and not (dev & train) and not (test & dev)
    assert {v.engine for v in test} == {"espeak", "flite", "festival"}
    # held-out identities are built on distinct engine voices
    assert len({v.base for v in test | dev}) == 10
    assert assign_voices(voices, [("test", 6), ("dev", 4)], seed=3) == parts
    assert assign_voices(voices, [("test", 6), ("dev", 4)], seed=4) != parts


# --------------------------------------------------------------------------- LibriSpeech


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_librispeech_layout(ls_corpus):
    root, summary = ls_corpus
    base = root / "LibriSpeech"
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == sorted(LS_SPLITS)
    assert (base / "SPEAKERS.TXT").is_file() and (base / "CHAPTERS.TXT").is_file()
    assert (root / "README.md").is_file() and (root / METADATA_FILE).is_file()
    counts = {"train-clean-100": 8, "dev-clean": 2, "test-clean": 2}
    for split, n in counts.items():
        flacs = sorted((base / split).glob("*/*/*.flac"))
        assert len(flacs) == n == summary["splits"][split]["utterances"]
        assert list((base / split).rglob("*")) == list((base / split).glob("**/*"))
        for flac in flacs:
            spk, chapter = flac.parent.parent.name, flac.parent.name
            assert re.fullmatch(rf"{spk}-{chapter}-\d{{4}}\.flac", flac.name), flac
            assert spk.isdigit() and chapter.isdigit()
        for chapter_dir in {f.parent for f in flacs}:
            spk, chapter = chapter_dir.parent.name, chapter_dir.name
            trans = list(chapter_dir.glob("*.trans.txt"))
            assert [t.name for t in trans] == [f"{spk}-{chapter}.trans.txt"]
            lines = trans[0].read_text().splitlines()
            ids = [line.split(" ", 1)[0] for line in lines]
            assert ids == sorted(f.stem for f in chapter_dir.glob("*.flac"))
            for line in lines:
                uid, words = line.split(" ", 1)
                assert ALLOWED_WORDS.match(words), line
    # no stray temporary files
    assert not list(root.rglob("*.part"))


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_librispeech_audio_is_16k_mono_and_not_silent(ls_corpus):
    root, _ = ls_corpus
    for flac in (root / "LibriSpeech").rglob("*.flac"):
        info = sf.info(flac)
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
        wav, _ = sf.read(flac, dtype="float32")
        assert 0.5 < len(wav) / 16000 < 30
        peak = float(np.abs(wav).max())
        assert 0.4 < peak <= 1.0
        assert float(np.sqrt(np.mean(wav**2))) > 0.01
        assert np.count_nonzero(wav == 0) < 0.2 * len(wav)  # no long digital silence


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_librispeech_heldout_voices_and_sentences(ls_corpus):
    root, summary = ls_corpus
    trans = _trans(root)
    spk = {s: {u.split("-")[0] for u in trans[s]} for s in LS_SPLITS}
    train = "train-clean-100"
    for split in ("dev-clean", "test-clean"):
        assert not spk[split] & spk[train]
        assert not set(trans[split].values()) & set(trans[train].values())
    assert not spk["dev-clean"] & spk["test-clean"]
    assert not set(trans["dev-clean"].values()) & set(trans["test-clean"].values())
    eval_words = _eval_lj_words()
    assert not set(trans[train].values()) & eval_words
    assert not set(trans["dev-clean"].values()) & eval_words
    # metadata and README state the protocol and the voices of each split
    meta = json.loads((root / METADATA_FILE).read_text())
    assert meta["complete"] and meta["corpus"] == "librispeech"
    assert set(meta["voices"]) == set(LS_SPLITS)
    assert not set(meta["voices"]["test-clean"]) & set(meta["voices"]["train-clean-100"])
    for split in LS_SPLITS:
        assert {str(s) for s in summary["splits"][split]["speakers"]} == spk[split]
        assert set(summary["splits"][split]["speakers"]) <= {
            int(s) for s in meta["voices"][split]}
    readme = (root / "README.md").read_text()
    assert "Held-out-voice evaluation" in readme and "seed 5" in readme
    assert meta["options"]["seed"] == 5


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_librispeech_utterance_table(ls_corpus):
    root, _ = ls_corpus
    rows = _read_tsv(root / "utterances.tsv")
    assert len(rows) == 12
    assert all((root / r["file"]).is_file() for r in rows)
    rates = {float(r["rate"]) for r in rows}
    assert len(rates) == 12 and all(0.88 <= x <= 1.12 for x in rates)
    snrs = [float(r["snr_db"]) for r in rows if r["snr_db"] != "-"]
    assert snrs and all(5 <= x <= 30 for x in snrs)
    assert any(r["reverb"] != "0" for r in rows)
    assert any(r["telephone"] == "1" for r in rows)


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_librispeech_deterministic_across_jobs(ls_corpus, tmp_path):
    root, summary = ls_corpus
    other = tmp_path / "again"
    again = synthesize_librispeech(other, jobs=1, **LS_ARGS)
    assert again["splits"] == summary["splits"]
    files = sorted(p.relative_to(root) for p in (root / "LibriSpeech").rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(other) for p in (other / "LibriSpeech").rglob("*")
                    if p.is_file())
    assert files == files2
    for rel in files:
        if rel.suffix == ".flac":
            a, _ = sf.read(root / rel, dtype="int16")
            b, _ = sf.read(other / rel, dtype="int16")
            assert np.array_equal(a, b), rel
        else:
            assert (root / rel).read_bytes() == (other / rel).read_bytes(), rel


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_librispeech_rerun_is_idempotent_and_resumes(ls_corpus, tmp_path):
    root, summary = ls_corpus
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    # the same options: nothing to do
    mtimes = {p: p.stat().st_mtime_ns for p in copy.rglob("*.flac")}
    again = synthesize_librispeech(copy, jobs=1, **LS_ARGS)
    assert again["up_to_date"] is True
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*.flac")} == mtimes
    # an interrupted run: one file missing, metadata not complete -> only it is redone
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta["complete"] = False
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    victim = sorted(mtimes)[3]
    original = sf.read(victim, dtype="int16")[0]
    victim.unlink()
    resumed = synthesize_librispeech(copy, jobs=1, **LS_ARGS)
    assert resumed["up_to_date"] is False
    assert np.array_equal(sf.read(victim, dtype="int16")[0], original)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p != victim)
    # a finished corpus that lost a file is completed too
    victim.unlink()
    (victim.parent / "stale.flac.part").write_bytes(b"half")
    assert synthesize_librispeech(copy, jobs=1, **LS_ARGS)["up_to_date"] is False
    assert np.array_equal(sf.read(victim, dtype="int16")[0], original)
    assert not list(copy.rglob("*.part"))
    # other options: refused unless overwrite
    with pytest.raises(ConfigError, match="other options"):
        synthesize_librispeech(copy, jobs=1, **{**LS_ARGS, "seed": 6})


@pytest.mark.shared_data
@pytest.mark.synth_engines("flite")
def test_librispeech_overwrite_and_other_seed(tmp_path):
    root = tmp_path / "c"
    args = dict(n_train=2, n_dev=0, n_test=1, engines=["flite"], progress=False)
    first = synthesize_librispeech(root, seed=1, **args)
    audio1 = {p.name: sf.read(p)[0] for p in root.rglob("*.flac")}
    second = synthesize_librispeech(root, seed=2, overwrite=True, **args)
    assert second["up_to_date"] is False
    audio2 = {p.name: sf.read(p)[0] for p in root.rglob("*.flac")}
    assert len(audio2) == 3 and "dev-clean" not in second["splits"]
    assert not (root / "LibriSpeech" / "dev-clean").exists()
    assert audio1.keys() != audio2.keys() or any(
        not np.array_equal(audio1[k], audio2[k]) for k in audio1)
    assert first["options"]["seed"] == 1 and second["options"]["seed"] == 2


@pytest.mark.shared_data
@pytest.mark.synth_engines("flite")
def test_eval_texts_build_the_test_split(tmp_path):
    root = tmp_path / "c"
    summary = synthesize_librispeech(root, n_train=2, n_dev=1, n_test=3, seed=1,
                                     engines=["flite"], eval_texts=True, progress=False,
                                     noise_prob=0, reverb_prob=0, telephone_prob=0)
    trans = _trans(root)
    eval_words = _eval_lj_words()
    assert set(trans["test-clean"].values()) <= eval_words
    assert not set(trans["train-clean-100"].values()) & eval_words
    assert not set(trans["dev-clean"].values()) & eval_words
    assert "built from them" in summary["heldout_statement"]


@pytest.mark.synth_engines("flite")
def test_eval_sentences_are_filtered_out_of_train_even_when_in_the_text(tmp_path):
    text = tmp_path / "text.tsv"
    evalf = tmp_path / "eval.tsv"
    shared = ["The jail fell short of the demands.", "Mr. Smith paid $5 in 1863.",
              "Nobody came to the door."]
    own = ["A quiet morning passed slowly.", "The river ran high that spring.",
           "They walked home after dark."]
    text.write_text("".join(f"X{i}\t{s}\n" for i, s in enumerate(shared + own)))
    # the evaluation file writes the same sentences differently (normalisation matches)
    evalf.write_text("".join(f"E{i}\t{s.upper()}\n" for i, s in enumerate(shared)))
    args = dict(text_file=text, eval_text_file=evalf, engines=["flite"], progress=False,
                noise_prob=0, reverb_prob=0, telephone_prob=0, dev_voices=1, test_voices=1)
    synthesize_librispeech(tmp_path / "c", n_train=3, n_dev=0, n_test=0, **args)
    train = set(_trans(tmp_path / "c")["train-clean-100"].values())
    assert train == {normalize_text(s) for s in own}
    with pytest.raises(ConfigError, match="only 3 usable"):
        synthesize_librispeech(tmp_path / "d", n_train=4, n_dev=0, n_test=0, **args)


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_prepare_reads_the_synthesized_librispeech(ls_corpus, tmp_path):
    from cald_speech.data.librispeech import prepare_librispeech

    root, summary = ls_corpus
    prep = prepare_librispeech(root, tmp_path / "csv", splits=list(LS_SPLITS), num_workers=1)
    for split in LS_SPLITS:
        assert prep.splits[split].kept == summary["splits"][split]["utterances"]
    rows = _read_tsv_csv(tmp_path / "csv" / "test-clean.csv")
    assert all(ALLOWED_WORDS.match(r["wrd"]) for r in rows)


def _read_tsv_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- SLURP


def _source_records():
    recs = {}
    for name in ("slurp_devel.jsonl", "slurp_test.jsonl"):
        for line in (DATA / "text" / name).read_text().splitlines():
            rec = json.loads(line)
            recs[rec["slurp_id"]] = rec
    return recs


def _slurp_split(root, split):
    path = root / "dataset" / "slurp" / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_slurp_layout_and_schema(slurp_corpus):
    root, summary = slurp_corpus
    source = _source_records()
    assert sorted(p.name for p in (root / "dataset" / "slurp").iterdir()) == [
        "devel.jsonl", "test.jsonl", "train.jsonl"]
    listed = set()
    for split, n in (("train", 6), ("devel", 2), ("test", 2)):
        recs = _slurp_split(root, split)
        assert len(recs) == n == summary["splits"][split]["records"]
        for rec in recs:
            original = source[rec["slurp_id"]]
            assert list(rec) == list(original)  # same keys, same order
            assert {k: v for k, v in rec.items() if k != "recordings"} == {
                k: v for k, v in original.items() if k != "recordings"}
            files = [r["file"] for r in rec["recordings"]]
            headset = [f for f in files if f.endswith("-headset.flac")]
            assert len(headset) == 2  # recordings_per_record
            for entry in rec["recordings"]:
                assert set(entry) == {"file", "wer", "ent_wer", "status"}
                assert re.fullmatch(r"audio-\d{10}(-headset)?\.flac", entry["file"])
                assert (root / "slurp_real" / entry["file"]).is_file()
                if not entry["file"].endswith("-headset.flac"):  # far-field twin
                    assert entry["file"].replace(".flac", "-headset.flac") in headset
            listed |= set(files)
    on_disk = {p.name for p in (root / "slurp_real").iterdir()}
    assert on_disk == listed
    far = [f for f in listed if not f.endswith("-headset.flac")]
    assert 0 < len(far) < len(listed) / 2
    for f in sorted(listed)[:6]:
        info = sf.info(root / "slurp_real" / f)
        assert (info.samplerate, info.channels) == (16000, 1)


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_slurp_far_field_twin_is_the_same_speech_reverberated(slurp_corpus):
    root, _ = slurp_corpus
    rows = {r["file"]: r for r in _read_tsv(root / "utterances.tsv")}
    far = sorted(f for f in rows if not f.endswith("-headset.flac"))
    assert far
    f = far[0]
    head = f.replace(".flac", "-headset.flac")
    assert rows[f]["speaker"] == rows[head]["speaker"] and rows[f]["reverb"] != "0"
    a, _ = sf.read(root / head)
    b, _ = sf.read(root / f)
    assert len(a) == len(b) and not np.array_equal(a, b)
    # headset recordings are close-talk, far-field ones always reverberant
    assert all((r["reverb"] == "0") == name.endswith("-headset.flac") for name, r in rows.items())


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_slurp_heldout_voices_and_sentences(slurp_corpus):
    root, _ = slurp_corpus
    rows = _read_tsv(root / "utterances.tsv")
    spk = {s: {r["speaker"] for r in rows if r["split"] == s} for s in ("train", "devel", "test")}
    assert not spk["train"] & spk["test"] and not spk["train"] & spk["devel"]
    words = {s: {normalize_text(r["sentence"]) for r in _slurp_split(root, s)}
             for s in ("train", "devel", "test")}
    ids = {s: {r["slurp_id"] for r in _slurp_split(root, s)} for s in ("train", "devel", "test")}
    assert not words["train"] & words["test"] and not words["train"] & words["devel"]
    assert not ids["train"] & ids["test"]
    heldout = [json.loads(line) for line in
               (DATA / "eval" / "text" / "slurp_heldout.jsonl").read_text().splitlines()]
    assert not ids["train"] & {r["slurp_id"] for r in heldout}
    assert not words["train"] & {normalize_text(r["sentence"]) for r in heldout}


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_prepare_reads_the_synthesized_slurp(slurp_corpus, tmp_path):
    from cald_speech.data.slurp import prepare_slurp

    root, summary = slurp_corpus
    prep = prepare_slurp(root, tmp_path / "csv", splits=["train", "devel", "test"],
                         recording="all")
    for split in ("train", "devel", "test"):
        assert prep.splits[split].kept == summary["splits"][split]["utterances"]


@pytest.mark.shared_data
@pytest.mark.synth_engines("flite")
def test_slurp_eval_texts(tmp_path):
    summary = synthesize_slurp(tmp_path / "s", n_train=2, n_dev=0, n_test=2, seed=1,
                               engines=["flite"], eval_texts=True, far_field_prob=0,
                               noise_prob=0, reverb_prob=0, telephone_prob=0, progress=False)
    heldout = {json.loads(line)["slurp_id"] for line in
               (DATA / "eval" / "text" / "slurp_heldout.jsonl").read_text().splitlines()}
    test_ids = {r["slurp_id"] for r in _slurp_split(tmp_path / "s", "test")}
    train_ids = {r["slurp_id"] for r in _slurp_split(tmp_path / "s", "train")}
    assert test_ids <= heldout and not train_ids & heldout
    assert summary["splits"]["test"]["far_field"] == 0


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def sentences(tmp_path):
    """A sentence file of the test's own: the tests of bad input need no shared data."""
    path = tmp_path / "sentences.tsv"
    path.write_text("".join(f"S{i}\t{s}\n" for i, s in enumerate([
        "A quiet morning passed slowly.", "The river ran high that spring.",
        "They walked home after dark.", "Nobody came to the door."])))
    return path


def test_unknown_engine_and_voices(tmp_path, sentences):
    with pytest.raises(ConfigError, match="unknown engine 'bogus'"):
        synthesize_librispeech(tmp_path, 1, 0, 0, engines=["bogus"], text_file=sentences,
                               progress=False)
    with pytest.raises(ConfigError, match="unknown flite voice 'awb_time'"):
        select_voices(["flite:awb_time"])
    records = tmp_path / "slurp.jsonl"
    records.write_text("".join(json.dumps(
        {"slurp_id": i, "sentence": s, "scenario": "general", "action": "quirky",
         "recordings": []}) + "\n" for i, s in enumerate(["hello there", "wake me up"])))
    with pytest.raises(ConfigError, match="unknown voice 'nobody'"):
        synthesize_slurp(tmp_path, 1, 0, 0, voices=["nobody"], slurp_files=[records],
                         progress=False)
    with pytest.raises(ConfigError, match="unknown engine 'piper'"):
        select_voices(["piper:amy"])


def test_missing_tool_names_the_apt_package(tmp_path, monkeypatch, sentences):
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng, flite, festival, sox
    with pytest.raises(ToolError, match=r"'flite' was not found.*apt-get install -y flite"):
        synthesize_librispeech(tmp_path / "c", 1, 0, 0, voices=["flite:slt"],
                               text_file=sentences, progress=False)
    with pytest.raises(ToolError, match="apt-get install"):
        synthesize_librispeech(tmp_path / "c", 1, 0, 0, text_file=sentences, progress=False)
    assert not (tmp_path / "c").exists()


@pytest.mark.synth_engines("flite")
def test_missing_and_empty_text_files(tmp_path):
    with pytest.raises(DataError, match="nothing.tsv: sentence file not found"):
        synthesize_librispeech(tmp_path / "c", 1, 0, 0, text_file=tmp_path / "nothing.tsv",
                               progress=False)
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty.tsv: holds no usable sentence"):
        synthesize_librispeech(tmp_path / "c", 1, 0, 0, text_file=empty, engines=["flite"],
                               progress=False)
    punct = tmp_path / "punct.tsv"
    punct.write_text("A\t...\nB\t?!\n")
    with pytest.raises(DataError, match="no usable sentence"):
        synthesize_librispeech(tmp_path / "c", 1, 0, 0, text_file=punct, engines=["flite"],
                               progress=False)
    with pytest.raises(DataError, match="SLURP annotation file not found"):
        synthesize_slurp(tmp_path / "s", 1, 0, 0, slurp_files=[tmp_path / "x.jsonl"],
                         progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"slurp_id": 1, "sentence": "hi"}\n')
    with pytest.raises(DataError, match="line 1"):
        synthesize_slurp(tmp_path / "s", 1, 0, 0, slurp_files=[bad], progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_train": -1}, "integer >= 0"),
        ({"n_train": 0, "n_dev": 0, "n_test": 0}, "nothing to synthesize"),
        ({"jobs": 0}, "jobs=0"),
        ({"noise_prob": 1.5}, "noise_prob"),
        ({"snr_db": (30, 5)}, "low is above high"),
        ({"peak_db": (-3, 2)}, "at most 0 dBFS"),
        ({"colour": "blue"}, "unknown option"),
        ({"engine_weights": {"piper": 1.0}}, "unknown engine 'piper'"),
        pytest.param({"engines": ["flite"], "test_voices": 10, "dev_voices": 10}, "cannot give",
                     marks=pytest.mark.synth_engines("flite")),   # checked after the tools
        ({"split_names": ("a", "a", "b")}, "three distinct"),
    ],
)
def test_bad_options(tmp_path, sentences, kwargs, message):
    args = {"n_train": 2, "n_dev": 1, "n_test": 1, "progress": False, "text_file": sentences,
            **kwargs}
    with pytest.raises(ConfigError, match=message):
        synthesize_librispeech(tmp_path / "c", **args)


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_folder_holding_something_else_is_refused(tmp_path, ls_corpus):
    foreign = tmp_path / "real"
    (foreign / "LibriSpeech" / "dev-clean").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not made by cald-synth"):
        synthesize_librispeech(foreign, 1, 0, 0, engines=["flite"], progress=False)
    assert (foreign / "LibriSpeech" / "dev-clean").is_dir()  # nothing deleted
    root, _ = ls_corpus
    with pytest.raises(ConfigError, match="holds a 'librispeech' corpus"):
        synthesize_slurp(root, 1, 0, 0, engines=["flite"], progress=False, overwrite=True)


@pytest.mark.shared_data
@pytest.mark.synth_engines("flite")
def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["librispeech", "--output-dir", str(out), "--train", "2", "--dev", "1",
                 "--test", "1", "--engines", "flite", "--seed", "4", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "train-clean-100" in printed and "total" in printed
    assert len(list((out / "LibriSpeech").rglob("*.flac"))) == 4
    assert main(["librispeech", "--output-dir", str(out), "--train", "2", "--dev", "1",
                 "--test", "1", "--engines", "flite", "--seed", "4", "--quiet"]) == 0
    assert "already up to date" in capsys.readouterr().out
    # errors: one line on stderr, non-zero exit
    code = main(["slurp", "--output-dir", str(tmp_path / "s"), "--engines", "bogus"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown engine 'bogus'" in err
    code = main(["librispeech", "--output-dir", str(tmp_path / "t"), "--text",
                 str(tmp_path / "none.tsv")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("cald-synth: error: ") and "none.tsv" in err
    assert main(["voices"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == len(list_voices()) and "flite-slt" in listing[12]


def test_command_line_process_exit_status(tmp_path):
    setup = (Path(__file__).resolve().parents[2] / "setup.py").read_text()
    assert "cald-synth=cald_speech.data.synth.cli:main" in setup
    proc = subprocess.run(
        [sys.executable, "-m", "cald_speech.data.synth", "slurp", "--output-dir",
         str(tmp_path / "s"), "--slurp-text", str(tmp_path / "missing.jsonl")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"cald-synth: error: {tmp_path / 'missing.jsonl'}: SLURP annotation file not found "
        "(fix: check the path, or pass another file)"]
