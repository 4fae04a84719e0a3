"""CTC beam search, LM fusion, word timings, the LM builder, and their errors."""

import json

import pytest
import torch

from cald_speech.data.hub_tokenizer import HubCTCTokenizer, write_hub_vocabulary
from cald_speech.data.tokenizer import CharTokenizer, SentencePieceTokenizer
from cald_speech.decoding import BeamDecoder, beam_vocabulary, check_beam_options
from cald_speech.errors import ConfigError, DataError
from cald_speech.inference import align_words
from cald_speech.lm.build import build_lm
from cald_speech.lm.cli import main as lm_main

TEXTS = ["THE CAT SAT ON THE MAT", "A DOG SAT ON A LOG", "THE DOG AND THE CAT",
         "IT'S A CAT", "THE MAT IS FLAT"]


def peaked(ids_per_frame, vocab, sure=0.9, seed=0):
    """Log posteriors that put ``sure`` on each frame's id and spread the rest at random."""
    g = torch.Generator().manual_seed(seed)
    rest = torch.rand(len(ids_per_frame), vocab, generator=g)
    probs = torch.zeros(len(ids_per_frame), vocab)
    for t, i in enumerate(ids_per_frame):
        r = rest[t].clone()
        r[i] = 0
        probs[t] = (1 - sure) * r / r.sum()
        probs[t, i] = sure
    return probs.log()


def frames_of(ids, blank=0, repeat=2):
    """A CTC path for ``ids``: each unit ``repeat`` frames, blanks between and around."""
    path = [blank]
    for i in ids:
        path += [i] * repeat + [blank]
    return path


def hub_tokenizer(tmp_path, **kw):
    write_hub_vocabulary(tmp_path, **kw)
    return HubCTCTokenizer.load(tmp_path)


@pytest.fixture(params=["char", "sentencepiece", "hub"])
def tokenizer(request, tmp_path):
    if request.param == "char":
        return CharTokenizer()
    if request.param == "sentencepiece":
        return SentencePieceTokenizer.train(TEXTS * 4, vocab_size=30, model_type="bpe")
    return hub_tokenizer(tmp_path)


#: both beam-search engines (the compiled one decodes character vocabularies only)
ENGINES = ("flashlight", "speechbrain")


def engines_for(tokenizer):
    return ("speechbrain",) if isinstance(tokenizer, SentencePieceTokenizer) else ENGINES


def test_beam_equals_greedy_with_timings_on_confident_posteriors(tokenizer):
    ids = tokenizer.encode("THE CAT SAT ON THE MAT")
    lp = peaked(frames_of(ids), len(tokenizer))
    g_text, g_words = align_words(lp, tokenizer, 0.02, 10.0)
    for engine in engines_for(tokenizer):
        text, words = BeamDecoder(tokenizer, beam_size=8, engine=engine).decode(
            lp, frame_shift=0.02, duration=10.0)
        assert text == g_text == "THE CAT SAT ON THE MAT"
        assert [(w.word, w.start, w.end) for w in words] == \
            [(w.word, w.start, w.end) for w in g_words]
        for b, g in zip(words, g_words):
            assert b.confidence == pytest.approx(g.confidence, abs=1e-4)


@pytest.mark.parametrize("engine", ENGINES)
def test_beam_sums_paths_where_greedy_takes_the_best_frame(engine):
    """The textbook case: per frame, blank wins; summed over paths, 'A' wins."""
    tok = CharTokenizer()
    a = tok.encode("A")[0]
    probs = torch.full((2, len(tok)), 1e-6)
    probs[:, 0], probs[:, a] = 0.52, 0.48
    lp = (probs / probs.sum(-1, keepdim=True)).log()
    assert align_words(lp, tok, 0.02)[0] == ""
    assert BeamDecoder(tok, beam_size=4, engine=engine).decode(lp, 0.02)[0] == "A"


@pytest.mark.parametrize("engine", ENGINES)
def test_special_units_are_never_emitted_by_the_beam(tmp_path, engine):
    tok = hub_tokenizer(tmp_path)
    ids = tok.encode("CAT")
    path = frames_of(ids)
    path[len(path) // 2] = tok.unk_id  # greedy would print <unk>
    lp = peaked(path, len(tok))
    assert "<unk>" in tok.decode_ctc(lp.argmax(-1))
    assert "<unk>" not in BeamDecoder(tok, beam_size=8, engine=engine).decode(lp, 0.02)[0]


@pytest.fixture(scope="module")
def corpus_lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    text = d / "text.txt"
    text.write_text("\n".join(["The cat sat on the mat."] * 20 + ["A dog sat on a log."] * 10
                              + ["The 2 cats sat."] * 3))
    return build_lm([text], d / "lm.arpa", order=3), d / "lm.arpa"


@pytest.mark.parametrize("engine", ENGINES)
def test_lm_fusion_fixes_a_word_the_acoustics_get_wrong(corpus_lm, engine):
    tok = CharTokenizer()
    ids = tok.encode("THE CAT SAD")
    lp = peaked(frames_of(ids), len(tok), sure=0.6)
    # the last letter: D slightly above T
    d, t = tok.encode("D")[0], tok.encode("T")[0]
    last = max(i for i, v in enumerate(frames_of(ids)) if v == d)
    for k in (last - 1, last):
        lp[k] = torch.full((len(tok),), 1e-4).log()
        lp[k, d], lp[k, t] = torch.tensor(0.5).log(), torch.tensor(0.45).log()
    lp = torch.log_softmax(lp, -1)
    _, path = corpus_lm
    assert BeamDecoder(tok, beam_size=16, engine=engine).decode(lp, 0.02)[0] == "THE CAT SAD"
    fused = BeamDecoder(tok, beam_size=16, lm=path, lm_weight=1.0, word_bonus=1.0,
                        engine=engine)
    text, words = fused.decode(lp, 0.02)
    assert text == "THE CAT SAT"
    assert [w.word for w in words] == ["THE", "CAT", "SAT"]


def test_compiled_search_with_an_lm_outputs_words_of_the_lm_only(corpus_lm):
    tok = CharTokenizer()
    # clear acoustics for a word the LM never saw: without the LM, it is decoded
    lp = peaked(frames_of(tok.encode("THE BAT SAT")), len(tok), sure=0.7)
    closed = BeamDecoder(tok, 16, lm=corpus_lm[1], engine="flashlight").decode(lp, 0.02)
    vocabulary = set(" ".join(["THE CAT SAT ON THE MAT", "A DOG SAT ON A LOG",
                               "THE TWO CATS SAT"]).split())
    assert BeamDecoder(tok, 16, engine="flashlight").decode(lp, 0.02)[0] == "THE BAT SAT"
    assert set(closed[0].split()) <= vocabulary and closed[0].startswith("THE ")


def test_lm_builder_normalises_spells_numbers_and_excludes(corpus_lm, tmp_path):
    info, path = corpus_lm
    arpa = path.read_text()
    assert "\tTWO\t" in arpa or "\tTWO\n" in arpa          # "2" spelled out
    assert "\tthe" not in arpa and "\tTHE" in arpa           # upper case, punctuation gone
    assert info["sentences"] == 33 and info["order"] == 3
    dev = tmp_path / "dev.csv"
    dev.write_text("ID,duration,wav,wrd\nu1,1.0,a.wav,A DOG SAT ON A LOG\n")
    src = tmp_path / "t.txt"
    src.write_text("A dog sat on a log.\nThe cat sat.\n")
    info = build_lm([src], tmp_path / "x.arpa", order=2, exclude=[dev])
    assert info["sentences"] == 1 and info["excluded_sentences"] == 1
    assert "LOG" not in (tmp_path / "x.arpa").read_text()


def test_lm_builder_follows_a_lower_case_hub_vocabulary(tmp_path):
    vocab = ["<pad>", "<s>", "</s>", "<unk>", "|", *"etaonihsrdlumwcfgypbvk'xjqz"]
    model = tmp_path / "m"
    write_hub_vocabulary(model, vocab)
    src = tmp_path / "t.txt"
    src.write_text("The café is open.\n")
    info = build_lm([src], tmp_path / "lm.arpa", order=2, model=model)
    words = {line.split("\t")[1] for line in (tmp_path / "lm.arpa").read_text().splitlines()
             if line.count("\t") >= 1 and line.split("\t")[1].isalpha()}
    assert {"the", "cafe", "is", "open"} <= words  # accents removed by the normaliser
    assert info["case"] == "lower"
    tok = HubCTCTokenizer.load(model)
    BeamDecoder(tok, beam_size=4, lm=tmp_path / "lm.arpa")  # its own alphabet: accepted


def test_cald_lm_command_writes_arpa_and_binary(tmp_path, capsys):
    src = tmp_path / "t.tsv"
    src.write_text("LJ1\tThe cat sat.\nLJ2\tThe dog sat.\n")
    assert lm_main(["build", str(src), "--out", str(tmp_path / "lm.arpa"), "--order", "2",
                    "--binary"]) == 0
    assert "2 sentences" in capsys.readouterr().out
    assert (tmp_path / "lm.bin").read_bytes()[:4] == b"mmap"
    assert json.loads((tmp_path / "lm.arpa.json").read_text())["vocabulary"] == 4
    tok = CharTokenizer()
    ids = tok.encode("THE CAT SAT")
    lp = peaked(frames_of(ids), len(tok))
    for engine in ENGINES:
        decoder = BeamDecoder(tok, 8, lm=tmp_path / "lm.bin", engine=engine)
        assert decoder.decode(lp, 0.02)[0] == "THE CAT SAT"
    # the compiled search's lexicon is the binary's word list, written beside it
    (tmp_path / "lm.words.txt").unlink()
    with pytest.raises(DataError, match="lm.words.txt.*cald-lm build writes it"):
        BeamDecoder(tok, 8, lm=tmp_path / "lm.bin", engine="flashlight")
    assert BeamDecoder(tok, 8, lm=tmp_path / "lm.bin", engine="speechbrain").decode(
        lp, 0.02)[0] == "THE CAT SAT"


# ---------------------------------------------------------------- bad input
def test_beam_options_that_cannot_work():
    with pytest.raises(ConfigError, match="positive integer"):
        check_beam_options(0)
    with pytest.raises(ConfigError, match="beam search only.*--beam-size"):
        check_beam_options(None, lm="lm.arpa")
    with pytest.raises(ConfigError, match="beam engine 'kaldi'"):
        check_beam_options(8, engine="kaldi")
    sp = SentencePieceTokenizer.train(TEXTS * 4, vocab_size=30, model_type="bpe")
    assert BeamDecoder(sp, 4).engine == "speechbrain"       # auto: pieces -> speechbrain
    with pytest.raises(ConfigError, match="--beam-engine speechbrain"):
        BeamDecoder(sp, 4, engine="flashlight")
    # each engine's own default weights (their scales differ)
    tok = CharTokenizer()
    assert BeamDecoder(tok, 4, engine="flashlight").settings()["engine"] == "flashlight"
    for engine, weight in (("flashlight", 1.5), ("speechbrain", 0.5)):
        assert BeamDecoder(tok, 4, engine=engine).lm_weight == weight


def test_lm_files_that_cannot_be_used(corpus_lm, tmp_path):
    tok = CharTokenizer()
    with pytest.raises(DataError, match=r"missing\.arpa: language model file not found"):
        BeamDecoder(tok, 4, lm=tmp_path / "missing.arpa")
    (tmp_path / "empty.arpa").write_text("")
    with pytest.raises(DataError, match=r"empty\.arpa: is empty"):
        BeamDecoder(tok, 4, lm=tmp_path / "empty.arpa")
    _, path = corpus_lm
    text = path.read_text()
    (tmp_path / "cut.arpa").write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"cut\.arpa: cannot be read by KenLM"):
        BeamDecoder(tok, 4, lm=tmp_path / "cut.arpa")
    lower = "\n".join(line if line.startswith("\\") else line.lower()
                      for line in text.splitlines())
    (tmp_path / "lower.arpa").write_text(lower + "\n")
    with pytest.raises(DataError, match=r"lower\.arpa: only 0 of its first .*another "
                                        r"alphabet or case.*cald-lm build"):
        BeamDecoder(tok, 4, lm=tmp_path / "lower.arpa")


def test_hub_vocabulary_without_a_word_delimiter(tmp_path):
    write_hub_vocabulary(tmp_path, ["<pad>", "<s>", "</s>", "<unk>", *"ABC"],
                         word_delimiter="|")
    with pytest.raises(DataError, match=r"vocab\.json.*word delimiter"):
        HubCTCTokenizer.load(tmp_path)


def test_vocabulary_of_each_tokenizer_kind(tmp_path):
    vocab, never = beam_vocabulary(hub_tokenizer(tmp_path))
    assert vocab[0] == "" and vocab[4] == " " and never == [1, 2, 3]
    sp = SentencePieceTokenizer.train(TEXTS * 4, vocab_size=30, model_type="bpe")
    vocab, _ = beam_vocabulary(sp)
    assert vocab[0] == "" and any(v.startswith("\u2581") for v in vocab)


def test_decoding_benchmark_tunes_on_dev_and_scores_test(corpus_lm, tmp_path, capsys):
    import soundfile as sf

    from cald_speech.bench.decoding import main as bench_main
    from cald_speech.bench.wer import error_rates, norm_text
    from cald_speech.inference import Transcriber
    from cald_speech.testing import hub_ctc_folder

    model = hub_ctc_folder(tmp_path / "m", "wav2vec2-base")
    rows = {}
    for split in ("dev", "test"):
        lines = ["ID,duration,wav,wrd"]
        for i, text in enumerate(TEXTS[:3]):
            g = torch.Generator().manual_seed(i + (10 if split == "test" else 0))
            wav = tmp_path / f"{split}{i}.wav"
            sf.write(wav, (0.2 * torch.randn(8000 + 2000 * i, generator=g)).numpy(), 16000)
            lines.append(f"{split}{i},{0.5 + 0.125 * i},{wav},{text}")
        rows[split] = lines
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    _, lm = corpus_lm
    out = tmp_path / "out"
    assert bench_main(["--model", str(model), "--csv", str(tmp_path / "test.csv"),
                       "--dev-csv", str(tmp_path / "dev.csv"), "--lm", str(lm),
                       "--beam-size", "4", "--lm-weights", "0.5", "2.0", "--word-bonuses",
                       "0", "2", "--long-minutes", "0.05", "--out-dir", str(out)]) == 0
    res = json.loads((out / "decoding.json").read_text())["results"][0]
    assert [r["decoding"] for r in res["rows"]] == ["greedy", "beam 4", "beam 4 + LM"]
    # the greedy row, recomputed from the model's own transcripts
    asr = Transcriber.from_pretrained(model)
    refs, hyps = [], []
    for line in rows["test"][1:]:
        _, _, wav, text = line.split(",")
        refs.append(text)
        hyps.append(norm_text(asr.transcribe_file(wav, timestamps=False).text))
    assert res["rows"][0]["wer"] == pytest.approx(error_rates(refs, hyps)["wer"])
    (engine, tuning), = res["lm_tuning"].items()
    assert engine == "flashlight" == res["rows"][2]["settings"]["engine"]
    assert len(tuning["grid"]) == 4
    assert tuning["best"]["wer"] == min(p["wer"] for p in tuning["grid"])
    assert res["rows"][2]["settings"]["lm_weight"] == tuning["best"]["lm_weight"]
    assert res["long"]["minutes"] == 0.05 and res["long"]["beam 4 + LM"]["decode_seconds"] > 0
    assert (out / "decoding.png").is_file()
    # both engines on the same posteriors: each with its own tuning
    assert bench_main(["--model", str(model), "--csv", str(tmp_path / "test.csv"),
                       "--dev-csv", str(tmp_path / "dev.csv"), "--lm", str(lm),
                       "--beam-size", "4", "--lm-weights", "0.5", "--word-bonuses", "0",
                       "--beam-engine", "flashlight", "speechbrain",
                       "--out-dir", str(tmp_path / "both")]) == 0
    both = json.loads((tmp_path / "both" / "decoding.json").read_text())["results"][0]
    assert [r["decoding"] for r in both["rows"]] == [
        "greedy", "beam 4 (flashlight)", "beam 4 + LM (flashlight)", "beam 4 (speechbrain)",
        "beam 4 + LM (speechbrain)"]
    assert sorted(both["lm_tuning"]) == ["flashlight", "speechbrain"]
    assert both["rows"][0]["wer"] == res["rows"][0]["wer"]
    assert bench_main(["--model", str(model), "--csv", str(tmp_path / "test.csv"),
                       "--lm", str(lm), "--beam-size", "4"]) == 2
    assert "--lm needs --dev-csv" in capsys.readouterr().err


@pytest.mark.parametrize("with_lm", [False, True])
def test_searching_runs_of_sure_blanks_as_one_frame_changes_nothing(corpus_lm, with_lm):
    """Long blank runs (as real CTC models emit) searched as one frame: same text, same
    word timings, a fraction of the frames searched."""
    tok = CharTokenizer()
    ids = tok.encode("THE CAT SAT ON THE MAT")
    path = []
    for i in ids:  # each unit 1-3 frames, then 4-9 blank frames; doubled letters too
        path += [i] * (1 + i % 3) + [0] * (4 + i % 6)
    g = torch.Generator().manual_seed(3)
    lp = peaked(path, len(tok), sure=0.7, seed=4)
    blank_frames = torch.tensor(path) == 0
    sure = torch.rand(len(path), generator=g) < 0.8
    lp[blank_frames & sure] = peaked([0] * int((blank_frames & sure).sum()), len(tok),
                                     sure=0.9995, seed=5)
    lm = corpus_lm[1] if with_lm else None
    every = BeamDecoder(tok, 8, lm=lm, blank_skip=None, engine="speechbrain")
    skip = BeamDecoder(tok, 8, lm=lm, engine="speechbrain")
    a, b = every.decode(lp, 0.02), skip.decode(lp, 0.02)
    assert a[0] == b[0] == "THE CAT SAT ON THE MAT"
    assert [(w.word, w.start, w.end) for w in a[1]] == [(w.word, w.start, w.end) for w in b[1]]
    assert len(skip.best(lp)[1]) < 0.6 * len(path)


def test_other_weights_on_a_shared_lm_decode_as_a_new_decoder(corpus_lm):
    tok = CharTokenizer()
    ids = tok.encode("THE CAT SAD")
    lp = peaked(frames_of(ids), len(tok), sure=0.55)
    base = BeamDecoder(tok, 8, lm=corpus_lm[1], engine="speechbrain")
    for weight, bonus in ((0.25, 0.0), (2.0, 3.0)):
        shared = base.with_weights(weight, bonus)
        fresh = BeamDecoder(tok, 8, lm=corpus_lm[1], lm_weight=weight, word_bonus=bonus,
                                engine="speechbrain")
        assert shared.best(lp)[0].score == pytest.approx(fresh.best(lp)[0].score)
        assert shared.decode(lp, 0.02)[0] == fresh.decode(lp, 0.02)[0]
    assert base.searcher.lm.alpha == 0.5  # the original keeps its weights
