"""LibriSpeech-layout preparation: manifests, skips, layout errors, idempotence, atomicity."""

import csv
import logging
import os

import numpy as np
import pytest
import soundfile as sf

from cald_speech.data import manifest
from cald_speech.data.librispeech import CSV_COLUMNS, STATE_FILE, prepare_librispeech
from cald_speech.data.prepare import main
from cald_speech.errors import DataError

SR = 16000


def write_tone(path, seconds, sr=SR, freq=220.0, channels=1):
    """A short sine tone with a little noise, in the format given by the extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.2 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.RandomState(0).randn(len(t))
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    sf.write(path, x.astype("float32"), sr)
    return path


def write_chapter(split_dir, spk, chapter, utts, ext=".flac", extra_lines=()):
    """utts: {utterance number: (words, seconds)}; writes the audio and the transcript."""
    folder = os.path.join(split_dir, str(spk), str(chapter))
    os.makedirs(folder, exist_ok=True)
    lines = []
    for n, (words, seconds) in utts.items():
        uid = f"{spk}-{chapter}-{n:04d}"
        write_tone(os.path.join(folder, uid + ext), seconds, freq=200 + 30 * n)
        lines.append(f"{uid} {words}")
    lines.extend(extra_lines)
    with open(os.path.join(folder, f"{spk}-{chapter}.trans.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def corpus(tmp_path):
    """<tmp>/LibriSpeech/{dev-clean,test-clean} with flac and wav chapters."""
    root = tmp_path / "corpus"
    dev = root / "LibriSpeech" / "dev-clean"
    write_chapter(dev, 84, 121123, {0: ("GO DO YOU HEAR", 0.5), 1: ("BUT IN LESS THAN", 0.8)})
    write_chapter(dev, 174, 50561, {0: ("IT'S A WAV FILE", 0.3)}, ext=".wav")
    test = root / "LibriSpeech" / "test-clean"
    write_chapter(test, 1089, 134686, {0: ("HE HOPED THERE", 0.4), 1: ("STUFF IT", 0.6),
                                       2: ("HELLO", 1.2)})
    return root


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_manifest_contents_flac_and_wav(corpus, tmp_path):
    save = tmp_path / "save"
    summary = prepare_librispeech(corpus, save, splits=["dev-clean", "test-clean"])
    header, rows = read_csv(save / "dev-clean.csv")
    assert header == CSV_COLUMNS == ["ID", "duration", "wav", "spk_id", "wrd"]
    by_id = {r["ID"]: r for r in rows}
    assert set(by_id) == {"84-121123-0000", "84-121123-0001", "174-50561-0000"}
    r = by_id["174-50561-0000"]
    assert r["wav"].endswith("174-50561-0000.wav") and os.path.isabs(r["wav"])
    assert r["spk_id"] == "174" and r["wrd"] == "IT'S A WAV FILE"
    assert float(r["duration"]) == pytest.approx(0.3)
    assert by_id["84-121123-0001"]["wav"].endswith(".flac")
    assert float(by_id["84-121123-0001"]["duration"]) == pytest.approx(0.8)
    assert [r["ID"] for r in rows] == sorted(by_id)  # default order: by ID
    s = summary.splits["dev-clean"]
    assert s.kept == 3 and s.skipped == {} and not s.up_to_date
    assert s.hours == pytest.approx(1.6 / 3600, rel=1e-4)
    assert s.sample_rates == {"16000": 3}
    assert summary.splits["test-clean"].kept == 3
    assert "dev-clean" in str(summary) and "written" in str(summary)


def test_data_folder_may_be_parent_or_the_corpus_itself(corpus, tmp_path):
    a = prepare_librispeech(corpus, tmp_path / "a", splits="dev-clean")
    b = prepare_librispeech(corpus / "LibriSpeech", tmp_path / "b", splits="dev-clean")
    assert a.splits["dev-clean"].kept == b.splits["dev-clean"].kept == 3
    assert read_csv(tmp_path / "a" / "dev-clean.csv") == read_csv(tmp_path / "b" / "dev-clean.csv")


def test_bad_items_are_skipped_counted_and_logged(tmp_path, caplog):
    split = tmp_path / "LibriSpeech" / "dev-clean"
    folder = write_chapter(
        split, 1, 2, {0: ("KEPT ONE", 0.5), 1: ("KEPT TWO", 0.5)},
        extra_lines=["1-2-0007 NO AUDIO FOR THIS LINE", "1-2-0008", "1-2-0000 DUPLICATE LINE"],
    )
    write_tone(os.path.join(folder, "1-2-0008.flac"), 0.5)  # empty transcript line
    write_tone(os.path.join(folder, "1-2-0009.flac"), 0.5)  # audio without transcript line
    open(os.path.join(folder, "1-2-0010.flac"), "wb").close()  # empty file
    with open(os.path.join(folder, "1-2-0011.flac"), "wb") as f:  # not audio at all
        f.write(os.urandom(2000))
    with open(os.path.join(folder, "1-2.trans.txt"), "a") as f:
        f.write("1-2-0010 EMPTY FILE\n1-2-0011 CORRUPT FILE\n")
    with caplog.at_level(logging.WARNING):
        summary = prepare_librispeech(tmp_path, tmp_path / "save", splits=["dev-clean"])
    s = summary.splits["dev-clean"]
    assert s.kept == 2
    assert s.skipped == {
        "no_audio": 1, "empty_transcript": 1, "duplicate_id": 1, "no_transcript": 1,
        "unreadable_audio": 2,
    }
    _, rows = read_csv(tmp_path / "save" / "dev-clean.csv")
    assert [r["ID"] for r in rows] == ["1-2-0000", "1-2-0001"]
    assert rows[0]["wrd"] == "KEPT ONE"
    log = caplog.text
    assert "1-2-0010.flac" in log and "1-2-0011.flac" in log  # unreadable files named
    assert "1-2-0007" in log
    text = str(summary)
    assert "2 unreadable or empty audio" in text and "1 transcript line without audio" in text


def test_full_audio_check_catches_truncated_flac(tmp_path):
    split = tmp_path / "dev-clean"
    folder = write_chapter(split, 3, 4, {0: ("WHOLE", 0.5), 1: ("TRUNCATED", 2.0)})
    path = os.path.join(folder, "3-4-0001.flac")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    fast = prepare_librispeech(tmp_path, tmp_path / "a", splits=["dev-clean"])
    assert fast.splits["dev-clean"].kept == 2  # the header alone looks fine
    full = prepare_librispeech(tmp_path, tmp_path / "b", splits=["dev-clean"], check_audio="full")
    assert full.splits["dev-clean"].kept == 1
    assert full.splits["dev-clean"].skipped == {"unreadable_audio": 1}


def test_flac_preferred_when_both_formats_exist(tmp_path):
    folder = write_chapter(tmp_path / "dev-clean", 5, 6, {0: ("BOTH", 0.5)}, ext=".wav")
    write_tone(os.path.join(folder, "5-6-0000.flac"), 0.5)
    s = prepare_librispeech(tmp_path, tmp_path / "save", splits=["dev-clean"])
    _, rows = read_csv(tmp_path / "save" / "dev-clean.csv")
    assert len(rows) == 1 and rows[0]["wav"].endswith(".flac")
    assert s.splits["dev-clean"].skipped == {"duplicate_audio": 1}


def test_not_a_layout_says_expected_and_found(tmp_path):
    (tmp_path / "music").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError) as err:
        prepare_librispeech(tmp_path, tmp_path / "save", splits=["dev-clean"])
    msg = str(err.value)
    assert "not a LibriSpeech layout" in msg and "dev-clean" in msg
    assert "trans.txt" in msg  # what was expected
    assert "music/" in msg and "notes.txt" in msg  # what was found
    assert not (tmp_path / "save" / "dev-clean.csv").exists()


def test_split_folder_passed_instead_of_its_parent(corpus, tmp_path):
    with pytest.raises(DataError, match="looks like a single split folder"):
        prepare_librispeech(corpus / "LibriSpeech" / "dev-clean", tmp_path / "s",
                            splits=["dev-clean"])


def test_split_without_transcripts_is_a_layout_error(tmp_path):
    write_tone(str(tmp_path / "dev-clean" / "1" / "2" / "1-2-0000.flac"), 0.2)
    with pytest.raises(DataError, match=r"no transcript file \(\*\.trans\.txt\)"):
        prepare_librispeech(tmp_path, tmp_path / "save", splits=["dev-clean"])


def test_missing_folder_and_missing_split(corpus, tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        prepare_librispeech(tmp_path / "nowhere", tmp_path / "save")
    with pytest.raises(DataError, match=r"\['train-clean-100'\]") as err:
        prepare_librispeech(corpus, tmp_path / "save", splits=["dev-clean", "train-clean-100"])
    assert "dev-clean/" in str(err.value)  # lists what is there


def test_idempotent_rerun_and_invalidation(corpus, tmp_path, caplog):
    save = tmp_path / "save"
    first = prepare_librispeech(corpus, save, splits=["dev-clean"])
    csv_path = save / "dev-clean.csv"
    stat = os.stat(csv_path)
    assert (save / STATE_FILE).is_file()
    with caplog.at_level(logging.INFO, logger="cald_speech.data.librispeech"):
        again = prepare_librispeech(corpus, save, splits=["dev-clean"])
    assert again.up_to_date and again.splits["dev-clean"].up_to_date
    assert "up to date" in caplog.text and "up to date" in str(again)
    assert again.splits["dev-clean"].kept == first.splits["dev-clean"].kept
    assert os.stat(csv_path).st_mtime_ns == stat.st_mtime_ns  # not rewritten

    # Other options: prepared again.
    other = prepare_librispeech(corpus, save, splits=["dev-clean"], max_duration=0.6)
    assert not other.up_to_date and other.splits["dev-clean"].kept == 2
    # Same options again: up to date.
    assert prepare_librispeech(corpus, save, splits=["dev-clean"], max_duration=0.6).up_to_date
    # A new file in the corpus: prepared again.
    write_chapter(corpus / "LibriSpeech" / "dev-clean", 9, 9, {0: ("NEW", 0.2)})
    grown = prepare_librispeech(corpus, save, splits=["dev-clean"], max_duration=0.6)
    assert not grown.up_to_date and grown.splits["dev-clean"].kept == 3
    # An edited or deleted manifest: prepared again.
    with open(csv_path, "a") as f:
        f.write("junk,1.0,x,y,z\n")
    assert not prepare_librispeech(corpus, save, splits=["dev-clean"], max_duration=0.6).up_to_date
    os.remove(csv_path)
    assert not prepare_librispeech(corpus, save, splits=["dev-clean"], max_duration=0.6).up_to_date
    assert csv_path.is_file()
    # force=True always prepares.
    assert not prepare_librispeech(corpus, save, splits=["dev-clean"], max_duration=0.6,
                                   force=True).up_to_date


def test_up_to_date_per_split(corpus, tmp_path):
    save = tmp_path / "save"
    prepare_librispeech(corpus, save, splits=["dev-clean"])
    s = prepare_librispeech(corpus, save, splits=["dev-clean", "test-clean"])
    assert s.splits["dev-clean"].up_to_date and not s.splits["test-clean"].up_to_date
    assert (save / "test-clean.csv").is_file()


def test_failed_run_leaves_no_csv(tmp_path):
    # Every transcript line lacks its audio: the split is empty, which is an error.
    folder = tmp_path / "dev-clean" / "1" / "2"
    folder.mkdir(parents=True)
    (folder / "1-2.trans.txt").write_text("1-2-0000 NO AUDIO\n")
    save = tmp_path / "save"
    with pytest.raises(DataError, match="no usable utterance") as err:
        prepare_librispeech(tmp_path, save, splits=["dev-clean"])
    assert "1 transcript line without audio" in str(err.value)
    assert not save.exists() or os.listdir(save) == []


def test_nothing_written_when_a_later_split_fails(corpus, tmp_path):
    bad = corpus / "LibriSpeech" / "dev-other" / "1" / "2"
    bad.mkdir(parents=True)
    (bad / "1-2.trans.txt").write_text("1-2-0000 NO AUDIO\n")
    save = tmp_path / "save"
    with pytest.raises(DataError):
        prepare_librispeech(corpus, save, splits=["dev-clean", "dev-other"])
    assert not (save / "dev-clean.csv").exists() and not (save / "dev-other.csv").exists()


def test_interrupted_write_leaves_old_csv_and_no_temp_file(corpus, tmp_path, monkeypatch):
    save = tmp_path / "save"
    prepare_librispeech(corpus, save, splits=["dev-clean"])
    before = (save / "dev-clean.csv").read_bytes()
    calls = {"n": 0}
    real_writerow = csv.DictWriter.writerow

    def failing_writerow(self, row):
        calls["n"] += 1
        if calls["n"] > 2:  # header + one row, then the disk "fills up"
            raise OSError("No space left on device")
        return real_writerow(self, row)

    monkeypatch.setattr(csv.DictWriter, "writerow", failing_writerow)
    with pytest.raises(OSError, match="No space left"):
        prepare_librispeech(corpus, save, splits=["dev-clean"], sorting="descending")
    assert (save / "dev-clean.csv").read_bytes() == before
    assert sorted(os.listdir(save)) == ["dev-clean.csv", STATE_FILE]


def test_allow_empty_writes_header_only(tmp_path, caplog):
    folder = tmp_path / "dev-clean" / "1" / "2"
    folder.mkdir(parents=True)
    (folder / "1-2.trans.txt").write_text("1-2-0000 NO AUDIO\n")
    with caplog.at_level(logging.WARNING):
        s = prepare_librispeech(tmp_path, tmp_path / "save", splits="dev-clean", allow_empty=True)
    assert s.splits["dev-clean"].kept == 0
    assert (tmp_path / "save" / "dev-clean.csv").read_text().strip() == ",".join(CSV_COLUMNS)
    assert "no usable utterance" in caplog.text


def test_sorting_and_duration_filters(corpus, tmp_path):
    s = prepare_librispeech(corpus, tmp_path / "a", splits=["test-clean"], sorting="ascending")
    _, rows = read_csv(tmp_path / "a" / "test-clean.csv")
    durs = [float(r["duration"]) for r in rows]
    assert durs == sorted(durs) and len(durs) == 3
    prepare_librispeech(corpus, tmp_path / "b", splits=["test-clean"], sorting="descending")
    _, rows = read_csv(tmp_path / "b" / "test-clean.csv")
    assert [float(r["duration"]) for r in rows] == sorted(durs, reverse=True)
    s = prepare_librispeech(corpus, tmp_path / "c", splits=["test-clean"], min_duration=0.5,
                            max_duration=1.0)
    assert s.splits["test-clean"].kept == 1
    assert s.splits["test-clean"].skipped == {"too_short": 1, "too_long": 1}
    with pytest.raises(ValueError, match="sorting"):
        prepare_librispeech(corpus, tmp_path / "d", splits=["test-clean"], sorting="random")


def test_speaker_chapter_ids(corpus, tmp_path):
    prepare_librispeech(corpus, tmp_path / "s", splits=["dev-clean"], spk_id="speaker-chapter")
    _, rows = read_csv(tmp_path / "s" / "dev-clean.csv")
    assert {r["spk_id"] for r in rows} == {"84-121123", "174-50561"}
    with pytest.raises(ValueError, match="spk_id"):
        prepare_librispeech(corpus, tmp_path / "s", splits=["dev-clean"], spk_id="reader")


def test_text_transform(corpus, tmp_path):
    prepare_librispeech(corpus, tmp_path / "s", splits=["dev-clean"], text_transform=str.lower)
    _, rows = read_csv(tmp_path / "s" / "dev-clean.csv")
    assert rows[0]["wrd"] == rows[0]["wrd"].lower()


def test_speechbrain_reads_the_manifest(corpus, tmp_path):
    import speechbrain as sb
    from speechbrain.dataio.dataset import DynamicItemDataset

    prepare_librispeech(corpus, tmp_path / "s", splits=["dev-clean"])
    ds = DynamicItemDataset.from_csv(str(tmp_path / "s" / "dev-clean.csv"))

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return sb.dataio.dataio.read_audio(wav)

    sb.dataio.dataset.add_dynamic_item([ds], audio_pipeline)
    ds.set_output_keys(["id", "sig", "wrd", "spk_id", "duration"])
    items = {it["id"]: it for it in ds}
    assert set(items) == {"84-121123-0000", "84-121123-0001", "174-50561-0000"}
    it = items["174-50561-0000"]
    assert it["wrd"] == "IT'S A WAV FILE" and it["spk_id"] == "174"
    assert it["sig"].shape[0] == int(it["duration"] * SR)


def test_read_manifest_validates(corpus, tmp_path):
    prepare_librispeech(corpus, tmp_path / "s", splits=["dev-clean"])
    rows = manifest.read_manifest(tmp_path / "s" / "dev-clean.csv", required=CSV_COLUMNS)
    assert len(rows) == 3 and all(isinstance(r["duration"], float) for r in rows)
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,duration,wav\na,1.0,x\na,2.0,y\n")
    with pytest.raises(DataError, match="line 3: duplicate ID 'a'"):
        manifest.read_manifest(bad)
    with pytest.raises(DataError, match=r"column\(s\) \['spk_id'\] missing"):
        manifest.read_manifest(bad, required=["ID", "spk_id"])


def test_cli_prints_summary_and_fails_cleanly(corpus, tmp_path, capsys):
    save = tmp_path / "save"
    assert main(["librispeech", str(corpus), "--output-dir", str(save),
                 "--splits", "dev-clean"]) == 0
    out = capsys.readouterr().out
    assert "LibriSpeech manifests in" in out and "dev-clean" in out and "written" in out
    assert main(["librispeech", str(corpus), "--output-dir", str(save),
                 "--splits", "dev-clean"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["librispeech", str(tmp_path / "nope"), "--output-dir", str(save)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cald-prepare: error: ") and "nope" in err[0]
