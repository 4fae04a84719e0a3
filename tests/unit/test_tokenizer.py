"""CTC tokenisers: character vocabulary and SentencePiece, round trips, CTC decoding, save/load."""

import csv
import json
import string

import numpy as np
import pytest
import torch

from cald_speech.data.prepare import main
from cald_speech.data.tokenizer import (
    BLANK,
    CharTokenizer,
    SentencePieceTokenizer,
    build_tokenizer,
    ctc_collapse,
    load_tokenizer,
)
from cald_speech.errors import ConfigError, DataError

SENTENCES = [
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "IT'S NOT WHAT YOUR COUNTRY CAN DO FOR YOU",
    "ASK WHAT YOU CAN DO FOR YOUR COUNTRY",
    "WAKE ME UP AT NINE IN THE MORNING",
    "PLAY SOME JAZZ AND TURN THE LIGHTS OFF",
    "WHAT'S THE WEATHER LIKE TOMORROW",
] * 5


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def spm_tok(request):
    return SentencePieceTokenizer.train(SENTENCES, vocab_size=40, model_type=request.param)


def test_default_char_vocabulary_layout():
    tok = CharTokenizer()
    assert tok.symbols[0] == BLANK and tok.blank_id == 0
    assert tok.symbols[1] == "|" and tok.word_sep_id == 1
    assert tok.symbols[2:28] == list(string.ascii_uppercase)
    assert tok.symbols[28] == "'"
    assert len(tok) == 29 and tok.unk_id is None


@pytest.mark.parametrize("text", SENTENCES[:6] + ["A", "I'M"])
def test_char_round_trip(text):
    tok = CharTokenizer()
    ids = tok.encode(text)
    assert 0 not in ids
    assert tok.decode(ids) == text


def test_char_encode_details():
    tok = CharTokenizer()
    assert tok.encode("ab  c") == [2, 3, 1, 4]  # lower case folded, spaces collapsed
    assert tok.encode("  ") == []
    assert tok.decode([1, 2, 1, 1, 3, 1]) == "A B"  # stray separators do not add spaces
    assert tok.decode(torch.tensor([2, 0, 3])) == "AB"  # blanks dropped; tensors accepted
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([29])
    keep_case = CharTokenizer(list("|abc"), case=None)
    assert keep_case.encode("abc") == [2, 3, 4]
    with pytest.raises(ConfigError, match="'A'"):
        keep_case.encode("ABC")


def test_unknown_characters():
    with pytest.raises(ConfigError, match=r"character '1' \(U\+0031\) in 'ROOM 101'"):
        CharTokenizer().encode("room 101")
    tok = CharTokenizer(unk=True)
    assert tok.symbols[-1] == "<unk>" and tok.unk_id == len(tok) - 1
    ids = tok.encode("room 1")
    assert ids[-1] == tok.unk_id
    assert tok.decode(ids) == "ROOM <unk>"


def test_bad_vocabularies():
    with pytest.raises(ConfigError, match="repeated"):
        CharTokenizer(list("|AA"))
    with pytest.raises(ConfigError, match="cannot be characters"):
        CharTokenizer(["|", " "])
    with pytest.raises(ConfigError, match="case"):
        CharTokenizer(case="title")


def test_char_from_texts():
    tok = CharTokenizer.from_texts(["hello world", "naïve 2"])
    assert tok.symbols[:2] == [BLANK, "|"]
    assert tok.characters[1:] == ["A", "D", "E", "H", "L", "N", "O", "R", "V", "W", "2", "Ï"]
    assert tok.decode(tok.encode("NAÏVE WORLD 2")) == "NAÏVE WORLD 2"
    with pytest.raises(DataError):
        CharTokenizer.from_texts(["   "])


def test_ctc_greedy_decoding():
    tok = CharTokenizer()
    a, b, sep = tok.encode("A")[0], tok.encode("B")[0], tok.word_sep_id
    frames = [0, a, a, 0, a, sep, sep, 0, b, b, 0]
    assert ctc_collapse(frames) == [a, a, sep, b]
    assert tok.decode_ctc(frames) == "AA B"
    assert tok.decode_ctc(np.array([0, 0, 0])) == ""
    assert tok.decode_ctc(torch.tensor([a, 0, a])) == "AA"  # blank separates repeats
    with pytest.raises(ValueError, match="batch"):
        tok.decode_ctc([[1, 2]])


def test_char_save_load(tmp_path):
    tok = CharTokenizer.from_texts(SENTENCES, unk=True)
    path = tok.save(tmp_path / "chars.json")
    assert path.endswith("chars.json")
    data = json.loads(open(path).read())
    assert data["kind"] == "char" and data["symbols"][0] == BLANK
    again = CharTokenizer.load(path)
    assert again == tok and len(again) == len(tok)
    assert again.encode(SENTENCES[1]) == tok.encode(SENTENCES[1])
    assert load_tokenizer(path) == tok
    folder_path = tok.save(tmp_path / "folder")  # a folder gets tokenizer.json
    assert folder_path.endswith("tokenizer.json") and load_tokenizer(tmp_path / "folder") == tok
    assert CharTokenizer() != tok


def test_sentencepiece_blank_and_round_trip(spm_tok):
    assert spm_tok.blank_id == 0 and spm_tok.pieces[0] == BLANK
    assert len(spm_tok) > 10
    for text in SENTENCES[:6]:
        ids = spm_tok.encode(text)
        assert ids and 0 not in ids
        assert spm_tok.decode(ids) == text
    assert spm_tok.decode(spm_tok.encode("the quick dog")) == "THE QUICK DOG"  # case folded
    # Unknown characters become <unk> instead of failing.
    assert spm_tok.unk_id in spm_tok.encode("ZZZ 7")


def test_sentencepiece_ctc_decoding(spm_tok):
    ids = spm_tok.encode("WAKE ME UP")
    frames = [0]
    for i in ids:
        frames += [i, i, 0]
    assert spm_tok.decode_ctc(frames) == "WAKE ME UP"
    assert spm_tok.decode_ctc(torch.tensor(frames)) == "WAKE ME UP"


def test_sentencepiece_save_load(spm_tok, tmp_path):
    path = spm_tok.save(tmp_path / "sp.json")
    assert (tmp_path / "sp.model").is_file()
    meta = json.loads(open(path).read())
    assert meta["kind"] == "sentencepiece" and meta["model"] == "sp.model"
    again = load_tokenizer(path)
    assert isinstance(again, SentencePieceTokenizer) and again == spm_tok
    assert again.model_type == spm_tok.model_type
    assert again.encode(SENTENCES[2]) == spm_tok.encode(SENTENCES[2])
    (tmp_path / "sp.model").unlink()
    with pytest.raises(DataError, match="sp.model: SentencePiece model file not found"):
        load_tokenizer(path)


def test_sentencepiece_is_deterministic():
    a = SentencePieceTokenizer.train(SENTENCES, vocab_size=40)
    b = SentencePieceTokenizer.train(SENTENCES, vocab_size=40)
    assert a == b


def test_sentencepiece_from_csv_column(tmp_path):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "spk_id", "wrd"])
        for i, s in enumerate(SENTENCES):
            w.writerow([f"u{i}", 1.0, f"/x/{i}.flac", "1", s])
    tok = build_tokenizer("bpe", csv_path=path, vocab_size=50)
    assert tok.model_type == "bpe" and tok.decode(tok.encode(SENTENCES[0])) == SENTENCES[0]
    chars = build_tokenizer("char", csv_path=path)
    assert "Q" in chars.characters and "'" in chars.characters
    with pytest.raises(DataError, match="no column 'text'"):
        build_tokenizer("unigram", csv_path=path, column="text")


def test_factory_and_errors(tmp_path):
    assert build_tokenizer("char") == CharTokenizer()
    assert isinstance(build_tokenizer("sentencepiece", texts=SENTENCES, vocab_size=30),
                      SentencePieceTokenizer)
    assert build_tokenizer("unigram", texts=SENTENCES, vocab_size=30).model_type == "unigram"
    with pytest.raises(ConfigError, match="kind 'word' is unknown"):
        build_tokenizer("word")
    with pytest.raises(ConfigError, match="texts="):
        build_tokenizer("bpe")
    with pytest.raises(DataError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "nothing.json")
    (tmp_path / "x.json").write_text('{"kind": "wordpiece"}')
    with pytest.raises(DataError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_tokenizer(tmp_path / "y.json")


def test_cli_builds_a_tokenizer(tmp_path, capsys):
    path = tmp_path / "dev.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "wrd"])
        for i, s in enumerate(SENTENCES):
            w.writerow([f"u{i}", s])
    assert main(["tokenizer", str(path), str(tmp_path / "tok.json")]) == 0
    assert "written to" in capsys.readouterr().out
    assert isinstance(load_tokenizer(tmp_path / "tok.json"), CharTokenizer)
    assert main(["tokenizer", str(path), str(tmp_path / "sp"), "--kind", "unigram",
                 "--vocab-size", "30"]) == 0
    assert isinstance(load_tokenizer(tmp_path / "sp"), SentencePieceTokenizer)
    assert main(["tokenizer", str(tmp_path / "none.csv"), str(tmp_path / "t.json")]) == 1
    assert "none.csv: CSV file not found" in capsys.readouterr().err
