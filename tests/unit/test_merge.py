"""Merging manifests (``cald-prepare merge``) and the recipes' ``data_format: csv``."""

import os

import pytest

from cald_speech.data.manifest import read_manifest, write_csv_atomic
from cald_speech.data.merge import merge_manifests
from cald_speech.data.prepare import main as prepare_main
from cald_speech.errors import ConfigError, DataError
from cald_speech.tasks.recipe import prepare_manifests

LS = ["ID", "duration", "wav", "spk_id", "wrd"]
SLURP = ["ID", "duration", "wav", "semantics", "transcript"]


def ls_rows(root, ids):
    return [{"ID": i, "duration": 1.0 + k, "wav": os.path.join(root, f"{i}.flac"),
             "spk_id": "7", "wrd": f"WORDS {i}"} for k, i in enumerate(ids)]


def corpus_with_table(root, voices):
    """A synthetic-corpus folder: utterances.tsv naming each file's voice; its manifest."""
    os.makedirs(root, exist_ok=True)
    lines = ["file\tsplit\tspeaker\tvoice"]
    lines += [f"{i}.flac\ttrain\t7\t{v}" for i, v in voices.items()]
    with open(os.path.join(root, "utterances.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    path = os.path.join(root, "train.csv")
    write_csv_atomic(path, LS, ls_rows(root, list(voices)))
    return path


def test_rows_in_order_with_renamed_columns(tmp_path):
    a, b, out = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "out.csv"
    write_csv_atomic(a, LS, ls_rows(str(tmp_path), ["u1", "u2"]))
    write_csv_atomic(b, SLURP, [{"ID": "s1", "duration": 0.5, "wav": "/x/s1.flac",
                                 "semantics": "{}", "transcript": "turn it off"}])
    assert merge_manifests(out, [a, b], rename={"transcript": "wrd"}) == 3
    rows = read_manifest(out)
    assert [r["ID"] for r in rows] == ["u1", "u2", "s1"]
    assert [r["wrd"] for r in rows] == ["WORDS u1", "WORDS u2", "turn it off"]
    assert [r["duration"] for r in rows] == [1.0, 2.0, 0.5]
    assert list(rows[0]) == ["ID", "duration", "wav", "wrd"]


def test_colliding_ids_name_both_files_unless_prefixed(tmp_path):
    a, b, out = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "out.csv"
    write_csv_atomic(a, LS, ls_rows(str(tmp_path), ["u1"]))
    write_csv_atomic(b, LS, ls_rows(str(tmp_path), ["u1"]))
    with pytest.raises(DataError, match=r"b\.csv.*'u1' is also in .*a\.csv"):
        merge_manifests(out, [a, b])
    assert not out.exists()
    merge_manifests(out, [a, b], prefix_ids=True)
    assert [r["ID"] for r in read_manifest(out)] == ["0:u1", "1:u1"]


def test_missing_column_and_output_as_input_are_refused(tmp_path):
    a = tmp_path / "a.csv"
    write_csv_atomic(a, SLURP, [{"ID": "s1", "duration": 0.5, "wav": "w", "semantics": "{}",
                                 "transcript": "x"}])
    with pytest.raises(DataError, match=r"no column\(s\) \['wrd'\].*--rename"):
        merge_manifests(tmp_path / "o.csv", [a])
    with pytest.raises(DataError, match="both an input and the output"):
        merge_manifests(a, [a], rename={"transcript": "wrd"})
    with pytest.raises(ConfigError, match="at least one"):
        merge_manifests(tmp_path / "o.csv", [])


def test_rows_chosen_by_voice_or_engine(tmp_path):
    one = corpus_with_table(str(tmp_path / "c1"), {"a": "festival-kal_diphone",
                                                   "b": "flite-kal-a", "c": "espeak-en-us+m3"})
    two = corpus_with_table(str(tmp_path / "c2"), {"d": "festival-ked_diphone-b",
                                                   "e": "flite-slt"})
    tables = [str(tmp_path / "c1"), str(tmp_path / "c2")]
    out = tmp_path / "out.csv"
    merge_manifests(out, [one, two], drop_voices=["festival"], voice_tables=tables)
    assert [r["ID"] for r in read_manifest(out)] == ["b", "c", "e"]
    merge_manifests(out, [one, two], keep_voices=["festival"], voice_tables=tables)
    assert [r["ID"] for r in read_manifest(out)] == ["a", "d"]
    merge_manifests(out, [one, two], keep_voices=["flite-kal"], voice_tables=tables)
    assert [r["ID"] for r in read_manifest(out)] == ["b"]   # a voice and its variants
    with pytest.raises(DataError, match="in none of the voice tables"):
        merge_manifests(out, [one, two], drop_voices=["flite"], voice_tables=tables[:1])
    with pytest.raises(DataError, match="utterances.tsv: not found"):
        merge_manifests(out, [one], drop_voices=["flite"], voice_tables=[str(tmp_path)])


def test_cli_merges_and_reports_bad_input(tmp_path, capsys):
    a, b, out = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "out.csv"
    write_csv_atomic(a, LS, ls_rows(str(tmp_path), ["u1"]))
    write_csv_atomic(b, SLURP, [{"ID": "s1", "duration": 0.5, "wav": "w", "semantics": "{}",
                                 "transcript": "x"}])
    assert prepare_main(["merge", str(out), str(a), str(b)]) == 0   # transcript=wrd default
    assert "2 rows from 2 manifest(s)" in capsys.readouterr().out
    assert prepare_main(["merge", str(out), str(a), "--rename", "wrd"]) == 2  # usage error
    assert "--rename 'wrd': write OLD=NEW" in capsys.readouterr().err
    assert prepare_main(["merge", str(out), str(tmp_path / "nope.csv")]) == 1
    assert "nope.csv: manifest not found" in capsys.readouterr().err


def test_csv_data_format_reads_the_split_files(tmp_path):
    write_csv_atomic(tmp_path / "train.csv", LS, ls_rows(str(tmp_path), ["u1"]))
    write_csv_atomic(tmp_path / "dev.csv", LS, ls_rows(str(tmp_path), ["u2"]))
    hp = {"data_format": "csv", "data_folder": str(tmp_path), "manifest_folder": "unused",
          "train_splits": ["train"], "valid_splits": ["dev"], "test_splits": []}
    assert prepare_manifests(hp) == {"train": str(tmp_path / "train.csv"),
                                     "dev": str(tmp_path / "dev.csv")}
    hp["test_splits"] = ["test"]
    with pytest.raises(ConfigError, match=r"test\.csv.*cald-prepare merge"):
        prepare_manifests(hp)
