"""SLURP-layout preparation: recordings selection, synthetic audio, validation, idempotence."""

import csv
import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf

from cald_speech.data.prepare import main
from cald_speech.data.slurp import CSV_COLUMNS, STATE_FILE, prepare_slurp, read_slurp_jsonl
from cald_speech.data.synth import default_data_dir
from cald_speech.errors import ConfigError, DataError

SR = 16000
SHARED_DEVEL = default_data_dir() / "text" / "slurp_devel.jsonl"


def write_tone(path, seconds=0.4, sr=SR, freq=300.0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.2 * np.sin(2 * np.pi * freq * t)).astype("float32"), sr)


def make_record(slurp_id, sentence, scenario, action, files):
    """A record in SLURP's own schema (as in dataset/slurp/*.jsonl)."""
    words = sentence.split()
    return {
        "slurp_id": slurp_id,
        "sentence": sentence,
        "sentence_annotation": sentence,
        "intent": f"{scenario}_{action}",
        "action": action,
        "tokens": [{"surface": w, "id": i, "lemma": w, "pos": "NN"} for i, w in enumerate(words)],
        "scenario": scenario,
        "recordings": [{"file": f, "wer": 0.0, "ent_wer": 0.0, "status": "correct"}
                       for f in files],
        "entities": [],
    }


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


@pytest.fixture
def slurp(tmp_path):
    """<tmp>/slurp with dataset/slurp/*.jsonl, slurp_real/ and slurp_synth/."""
    root = tmp_path / "slurp"
    ann = root / "dataset" / "slurp"
    real = root / "slurp_real"
    synth = root / "slurp_synth"
    train = [
        make_record(1, "wake me up at nine", "alarm", "set",
                    ["audio-101-headset.flac", "audio-101.flac"]),
        make_record(2, "what's the weather like", "weather", "query",
                    ["audio-102-headset.flac", "audio-102.flac", "audio-103.flac"]),
    ]
    devel = [make_record(3, "play some jazz", "play", "music",
                         ["audio-201-headset.flac", "audio-201.flac"])]
    test = [make_record(4, "turn the lights off", "iot", "hue_lightoff",
                        ["audio-301-headset.flac", "audio-301.flac"])]
    synthetic = [make_record(5, "order a pizza", "takeaway", "order", ["audio-901.flac"])]
    write_jsonl(ann / "train.jsonl", train)
    write_jsonl(ann / "devel.jsonl", devel)
    write_jsonl(ann / "test.jsonl", test)
    write_jsonl(ann / "train_synthetic.jsonl", synthetic)
    for recs, folder in ((train + devel + test, real), (synthetic, synth)):
        for k, rec in enumerate(recs):
            for j, r in enumerate(rec["recordings"]):
                write_tone(str(folder / r["file"]), seconds=0.3 + 0.1 * j, freq=200 + 50 * k)
    return root


def read_rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_manifest_columns_and_values(slurp, tmp_path):
    save = tmp_path / "save"
    summary = prepare_slurp(slurp, save)
    header, rows = read_rows(save / "train.csv")
    assert header == CSV_COLUMNS
    assert header == ["ID", "duration", "wav", "semantics", "transcript", "scenario", "action",
                      "intent"]
    assert [r["ID"] for r in rows] == ["1_audio-101-headset", "2_audio-102-headset"]
    r = rows[1]
    assert r["wav"] == str(slurp / "slurp_real" / "audio-102-headset.flac")
    assert float(r["duration"]) == pytest.approx(0.3)
    assert r["transcript"] == "what's the weather like"
    assert (r["scenario"], r["action"], r["intent"]) == ("weather", "query", "weather_query")
    original = [json.loads(line) for line in open(slurp / "dataset" / "slurp" / "train.jsonl")]
    assert json.loads(r["semantics"]) == original[1]
    for split in ("devel", "test"):
        assert summary.splits[split].kept == 1
    assert summary.splits["train"].kept == 2 and summary.splits["train"].skipped == {}
    assert "SLURP manifests in" in str(summary)


@pytest.mark.parametrize("recording, expected", [
    ("headset", ["1_audio-101-headset", "2_audio-102-headset"]),
    ("far_field", ["1_audio-101", "2_audio-102", "2_audio-103"]),
    ("all", ["1_audio-101", "1_audio-101-headset", "2_audio-102", "2_audio-102-headset",
             "2_audio-103"]),
])
def test_recording_selection(slurp, tmp_path, recording, expected):
    prepare_slurp(slurp, tmp_path / "s", splits=["train"], recording=recording)
    _, rows = read_rows(tmp_path / "s" / "train.csv")
    assert [r["ID"] for r in rows] == expected


def test_bad_recording_option(slurp, tmp_path):
    with pytest.raises(ConfigError, match="recording='close'"):
        prepare_slurp(slurp, tmp_path / "s", recording="close")


def test_synthetic_recordings(slurp, tmp_path):
    s = prepare_slurp(slurp, tmp_path / "a", splits=["train"], use_synthetic=True)
    _, rows = read_rows(tmp_path / "a" / "train.csv")
    ids = [r["ID"] for r in rows]
    assert ids == ["1_audio-101-headset", "2_audio-102-headset", "synth_5_audio-901"]
    assert rows[-1]["wav"] == str(slurp / "slurp_synth" / "audio-901.flac")
    assert rows[-1]["intent"] == "takeaway_order"
    assert s.splits["train"].kept == 3
    prepare_slurp(slurp, tmp_path / "b", splits=["train_synthetic"])
    _, rows = read_rows(tmp_path / "b" / "train_synthetic.csv")
    assert [r["ID"] for r in rows] == ["synth_5_audio-901"]


def test_explicit_folders(slurp, tmp_path):
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    os.rename(slurp / "slurp_real", moved / "audio")
    os.rename(slurp / "dataset" / "slurp", moved / "ann")
    with pytest.raises(DataError, match="not a SLURP layout"):
        prepare_slurp(slurp, tmp_path / "s", splits=["devel"])
    s = prepare_slurp(tmp_path, tmp_path / "s", splits=["devel"],
                      annotation_folder=moved / "ann", real_audio_folder=moved / "audio")
    assert s.splits["devel"].kept == 1
    _, rows = read_rows(tmp_path / "s" / "devel.csv")
    assert rows[0]["wav"] == str(moved / "audio" / "audio-201-headset.flac")


def test_missing_and_bad_recordings_are_skipped_and_counted(slurp, tmp_path, caplog):
    os.remove(slurp / "slurp_real" / "audio-102-headset.flac")
    (slurp / "slurp_real" / "audio-101.flac").write_bytes(b"")  # empty file
    (slurp / "slurp_real" / "audio-103.flac").write_bytes(os.urandom(3000))  # corrupt
    extra = make_record(6, "no audio at all", "general", "quirky", [])
    with open(slurp / "dataset" / "slurp" / "train.jsonl", "a") as f:
        f.write(json.dumps(extra) + "\n")
    with caplog.at_level(logging.WARNING):
        s = prepare_slurp(slurp, tmp_path / "s", splits=["train"], recording="all")
    split = s.splits["train"]
    assert split.kept == 2
    assert split.skipped == {"missing_recording": 1, "unreadable_audio": 2, "no_recordings": 1}
    _, rows = read_rows(tmp_path / "s" / "train.csv")
    assert [r["ID"] for r in rows] == ["1_audio-101-headset", "2_audio-102"]
    assert "audio-102-headset.flac" in caplog.text
    assert "audio-101.flac" in caplog.text and "audio-103.flac" in caplog.text


def test_malformed_jsonl_names_file_and_line(slurp, tmp_path):
    ann = slurp / "dataset" / "slurp" / "devel.jsonl"
    good = json.dumps(make_record(3, "play some jazz", "play", "music", ["audio-201.flac"]))
    write_jsonl(ann, [good, "", '{"slurp_id": 8, "sentence": "broken'])
    with pytest.raises(DataError) as err:
        prepare_slurp(slurp, tmp_path / "s", splits=["devel"])
    assert str(ann) in str(err.value) and "line 3: not valid JSON" in str(err.value)
    assert not (tmp_path / "s" / "devel.csv").exists()


@pytest.mark.parametrize("record, message", [
    ({"slurp_id": 1, "sentence": "hi", "scenario": "general", "action": "greet"},
     r"line 2: record lacks key\(s\) \['recordings'\]"),
    ({"slurp_id": 1, "sentence": "hi", "scenario": "general", "action": "greet",
      "recordings": ["audio-1.flac"]}, "line 2: 'recordings' must be a list"),
    ({"slurp_id": 1, "sentence": 3, "scenario": "general", "action": "greet",
      "recordings": []}, "line 2: 'sentence' is not a string"),
    ([1, 2], "line 2: a JSON list, not a record"),
])
def test_invalid_records(tmp_path, record, message):
    path = tmp_path / "devel.jsonl"
    good = make_record(3, "play some jazz", "play", "music", ["audio-201.flac"])
    write_jsonl(path, [good, json.dumps(record)])
    with pytest.raises(DataError, match=message) as err:
        read_slurp_jsonl(path)
    assert str(path) in str(err.value)


def test_not_a_slurp_layout(tmp_path):
    (tmp_path / "wavs").mkdir()
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(DataError) as err:
        prepare_slurp(tmp_path, tmp_path / "save")
    msg = str(err.value)
    assert "not a SLURP layout" in msg and "dataset/slurp" in msg and "slurp_real" in msg
    assert "wavs/" in msg and "readme.md" in msg
    with pytest.raises(DataError, match="SLURP folder not found"):
        prepare_slurp(tmp_path / "missing", tmp_path / "save")


def test_missing_split_file_and_audio_folder(slurp, tmp_path):
    with pytest.raises(DataError, match="annotation file for split 'dev' not found") as err:
        prepare_slurp(slurp, tmp_path / "s", splits=["dev"])
    assert "devel.jsonl" in str(err.value)  # what is there
    os.rename(slurp / "slurp_synth", slurp / "synth_elsewhere")
    with pytest.raises(DataError, match="audio folder for split 'train_synthetic' not found"):
        prepare_slurp(slurp, tmp_path / "s", splits=["train"], use_synthetic=True)
    assert not (tmp_path / "s").exists()


def test_empty_split_is_an_error_unless_allowed(slurp, tmp_path, caplog):
    # The devel recordings are all headset/far-field pairs; remove both files.
    for name in ("audio-201-headset.flac", "audio-201.flac"):
        os.remove(slurp / "slurp_real" / name)
    with pytest.raises(DataError, match="split 'devel' has no usable recording") as err:
        prepare_slurp(slurp, tmp_path / "s")
    assert "1 recording listed but missing on disk" in str(err.value)
    assert not (tmp_path / "s").exists()  # not even train.csv: nothing half done
    with caplog.at_level(logging.WARNING):
        s = prepare_slurp(slurp, tmp_path / "s", allow_empty=True)
    assert s.splits["devel"].kept == 0 and s.splits["train"].kept == 2
    assert (tmp_path / "s" / "devel.csv").read_text().strip() == ",".join(CSV_COLUMNS)


def test_empty_selection_suggests_other_recording(slurp, tmp_path):
    rec = make_record(7, "far only", "general", "quirky", ["audio-701.flac"])
    write_jsonl(slurp / "dataset" / "slurp" / "devel.jsonl", [rec])
    write_tone(str(slurp / "slurp_real" / "audio-701.flac"))
    with pytest.raises(DataError, match="left out by --recording headset; try --recording all"):
        prepare_slurp(slurp, tmp_path / "s", splits=["devel"])
    assert prepare_slurp(slurp, tmp_path / "s", splits=["devel"], recording="all").kept == 1


def test_idempotent_rerun(slurp, tmp_path):
    save = tmp_path / "s"
    prepare_slurp(slurp, save, splits=["train", "devel"])
    mtime = os.stat(save / "train.csv").st_mtime_ns
    again = prepare_slurp(slurp, save, splits=["train", "devel"])
    assert again.up_to_date and again.splits["train"].kept == 2
    assert os.stat(save / "train.csv").st_mtime_ns == mtime
    assert (save / STATE_FILE).is_file()
    assert not prepare_slurp(slurp, save, splits=["train"], recording="all").up_to_date
    # A changed annotation file: prepared again.
    with open(slurp / "dataset" / "slurp" / "devel.jsonl", "a") as f:
        f.write(json.dumps(make_record(9, "hello", "general", "greet", ["audio-202-headset.flac"]))
                + "\n")
    write_tone(str(slurp / "slurp_real" / "audio-202-headset.flac"))
    s = prepare_slurp(slurp, save, splits=["devel"])
    assert not s.up_to_date and s.splits["devel"].kept == 2


def test_interrupted_write_leaves_no_csv(slurp, tmp_path, monkeypatch):
    def boom(self, row):
        raise KeyboardInterrupt

    monkeypatch.setattr(csv.DictWriter, "writerow", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_slurp(slurp, tmp_path / "s", splits=["devel"])
    assert os.listdir(tmp_path / "s") == []


def test_dollar_signs_survive_speechbrain(slurp, tmp_path):
    from speechbrain.dataio.dataset import DynamicItemDataset

    rec = make_record(10, "convert five dollars", "qa", "currency", ["audio-401-headset.flac"])
    rec["entities"] = [{"span": [1, 2], "type": "$amount"}]
    rec["tokens"][2]["pos"] = "PRP$"
    unsafe = make_record(11, "pay $rent now", "general", "quirky", ["audio-402-headset.flac"])
    write_jsonl(slurp / "dataset" / "slurp" / "test.jsonl", [rec, unsafe])
    write_tone(str(slurp / "slurp_real" / "audio-401-headset.flac"))
    write_tone(str(slurp / "slurp_real" / "audio-402-headset.flac"))
    s = prepare_slurp(slurp, tmp_path / "s", splits=["test"])
    assert s.splits["test"].skipped == {"unsafe_text": 1}  # '$rent' would be substituted
    ds = DynamicItemDataset.from_csv(str(tmp_path / "s" / "test.csv"))
    ds.set_output_keys(["id", "semantics"])
    items = list(ds)
    assert [it["id"] for it in items] == ["10_audio-401-headset"]
    assert json.loads(items[0]["semantics"]) == rec


def test_speechbrain_reads_the_manifest(slurp, tmp_path):
    import speechbrain as sb
    from speechbrain.dataio.dataset import DynamicItemDataset

    prepare_slurp(slurp, tmp_path / "s", splits=["train"], recording="all", use_synthetic=True)
    ds = DynamicItemDataset.from_csv(str(tmp_path / "s" / "train.csv"))

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return sb.dataio.dataio.read_audio(wav)

    sb.dataio.dataset.add_dynamic_item([ds], audio_pipeline)
    ds.set_output_keys(["id", "sig", "intent", "duration", "semantics"])
    items = list(ds)
    assert len(items) == 6
    for it in items:
        assert it["sig"].shape[0] == int(round(it["duration"] * SR))
        sem = json.loads(it["semantics"])
        assert it["intent"] == f"{sem['scenario']}_{sem['action']}"


@pytest.mark.skipif(not SHARED_DEVEL.is_file(), reason="shared SLURP annotations not present")
def test_real_slurp_records(tmp_path):
    """Real SLURP records (the real schema, and quirks such as intent != scenario_action)."""
    lines = SHARED_DEVEL.read_text().splitlines()[:40]
    root = tmp_path / "slurp"
    write_jsonl(root / "dataset" / "slurp" / "devel.jsonl", lines)
    records = [json.loads(line) for line in lines]
    headset = [r["file"] for rec in records for r in rec["recordings"]
               if r["file"].endswith("-headset.flac")]
    for name in headset[: len(headset) - 2]:  # the last two stay missing
        write_tone(str(root / "slurp_real" / name), seconds=0.1)
    s = prepare_slurp(root, tmp_path / "s", splits=["devel"])
    assert s.splits["devel"].kept == len(headset) - 2
    assert s.splits["devel"].skipped == {"missing_recording": 2}
    _, rows = read_rows(tmp_path / "s" / "devel.csv")
    by_file = {os.path.basename(r["wav"]): r for r in rows}
    for rec in records:
        for r in rec["recordings"]:
            if r["file"] in by_file:
                row = by_file[r["file"]]
                assert row["intent"] == f"{rec['scenario']}_{rec['action']}"
                assert json.loads(row["semantics"]) == rec
                assert row["transcript"] == " ".join(rec["sentence"].split())


def test_cli(slurp, tmp_path, capsys):
    save = tmp_path / "s"
    assert main(["slurp", str(slurp), "--output-dir", str(save), "--recording", "far_field",
                 "--splits", "train", "devel", "--use-synthetic"]) == 0
    out = capsys.readouterr().out
    assert "SLURP manifests in" in out and "train" in out
    _, rows = read_rows(save / "train.csv")
    assert len(rows) == 4  # 3 far-field + 1 synthetic
    assert main(["slurp", str(slurp), "--output-dir", str(save), "--recording", "far_field",
                 "--splits", "train", "devel", "--use-synthetic", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["splits"]["train"]["up_to_date"] and data["splits"]["train"]["kept"] == 4
    (slurp / "dataset" / "slurp" / "test.jsonl").write_text("{oops\n")
    assert main(["slurp", str(slurp), "--output-dir", str(save), "--splits", "test"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test.jsonl: line 1: not valid JSON" in err[0]
