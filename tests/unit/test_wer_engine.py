"""One WER engine: recipes, benchmarks, compare and pretraining score with jiwer alike."""

import json
import random

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.utils.metric_stats import ErrorRateStats
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from cald_speech.bench import compare, wer
from cald_speech.data import metrics
from cald_speech.data.pipeline import add_ctc_targets, audio_dataset
from cald_speech.data.tokenizer import CharTokenizer
from cald_speech.pretrain.train import _errors as pretrain_errors
from cald_speech.tasks.asr.brain import CTCBrain


def random_pairs(n, seed=0, vocab="ABC", longest=5, empty_refs=True):
    """``n`` (reference, hypothesis) pairs of 0..``longest`` words from ``vocab``."""
    rng = random.Random(seed)

    def text(low):
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(low, longest)))

    return [(text(0 if empty_refs else 1), text(0)) for _ in range(n)]


def diff_counts(diff):
    """(substitutions, deletions, insertions) that a :func:`wer.word_diff` string shows."""
    tokens = diff.split()
    subs = sum("->" in t for t in tokens)
    dels = sum(t.startswith("-") and "->" not in t for t in tokens)
    ins = sum(t.startswith("+") for t in tokens)
    assert subs + dels + ins == len(tokens), diff
    return subs, dels, ins


def jiwer_counts(ref, hyp):
    """(S, D, I) by jiwer itself; an empty reference: every hypothesis word inserted."""
    if not ref.split():
        return 0, 0, len(hyp.split())
    out = jiwer.process_words(ref, hyp)
    return out.substitutions, out.deletions, out.insertions


def test_the_issue_example_is_one_substitution():
    assert wer.word_diff("C C", "A C") == "C->A"
    assert wer.utterance_errors("C C", "A C") == (1, 2)
    assert wer.word_diff("A B C D", "A X C") == "B->X -D"
    assert wer.word_diff("", "UM ER") == "+UM +ER" and wer.word_diff("A B", "A B") == ""


def test_word_diff_shows_the_errors_jiwer_counts():
    pairs = random_pairs(20000, seed=1)
    bad = [(r, h) for r, h in pairs if diff_counts(wer.word_diff(r, h)) != jiwer_counts(r, h)]
    assert not bad, f"{len(bad)} of {len(pairs)} pairs disagree, e.g. {bad[:3]}"
    for r, h in pairs[:2000]:   # and the per-utterance count the benchmark writes
        assert wer.utterance_errors(r, h)[0] == sum(jiwer_counts(r, h))
    # the alignment's words spell both texts back
    for r, h in pairs[:2000]:
        steps = metrics.word_alignment(r, h)
        assert [a for _, a, _ in steps if a is not None] == r.split()
        assert [b for _, _, b in steps if b is not None] == h.split()


def test_corpus_rates_equal_jiwer():
    pairs = random_pairs(500, seed=2, vocab=["THE", "CAT", "SAT", "ON", "A", "MAT", "IT'S"],
                         longest=8, empty_refs=False)
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    out = metrics.error_rates(refs, hyps)
    words = jiwer.process_words(refs, hyps)
    assert out["wer"] == pytest.approx(jiwer.wer(refs, hyps)) == pytest.approx(words.wer)
    assert out["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert (out["substitutions"], out["deletions"], out["insertions"], out["hits"]) == (
        words.substitutions, words.deletions, words.insertions, words.hits)
    assert out["items"] == 500 and out["empty_references"] == 0
    assert wer.error_rates(refs, hyps) == out
    cer, w = pretrain_errors(refs, hyps)
    assert cer == pytest.approx(100 * jiwer.cer(refs, hyps))
    assert w == pytest.approx(100 * jiwer.wer(refs, hyps))


def test_whitespace_does_not_count():
    assert metrics.error_rates(["A  CAT "], [" A CAT"])["wer"] == 0
    out = metrics.error_rates(["A  CAT"], ["A CAT"])
    assert out["cer"] == 0 and out["ref_chars"] == 5


def test_an_empty_reference_is_counted_not_a_crash():
    """Convention: its hypothesis words (characters) are insertions, it adds no
    reference word, and it is counted in ``empty_references``."""
    out = metrics.error_rates(["", "A B", "  "], ["UM ER", "A B", ""])
    assert out["empty_references"] == 2 and out["items"] == 3
    assert (out["word_errors"], out["insertions"], out["ref_words"]) == (2, 2, 2)
    assert out["wer"] == 1.0
    assert (out["char_errors"], out["ref_chars"]) == (5, 3)
    # as jiwer 4 counts them when they are mixed with non-empty references
    assert out["wer"] == jiwer.wer(["", "A B"], ["UM ER", "A B"])
    # only empty references: nothing to get right, so 0 if nothing said, else 100 %
    assert metrics.error_rates([""], [""])["wer"] == 0.0
    assert metrics.error_rates(["", ""], ["", "UM"])["wer"] == 1.0
    assert metrics.error_rates([], [])["wer"] is None
    assert wer.utterance_errors("", "") == (0, 0)
    assert compare.utterance_counts([("", "UM"), ("A", "")]).tolist() == [[1, 0, 2, 0],
                                                                           [1, 1, 1, 1]]
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        metrics.utterance_scores(["A", "B"], ["A"])


# ----- the recipe's test stage: its numbers, its files, and compare reading them back -----

WORDS = ["A CAT", "THE DOG", "NO", "YES I DO", "IT'S ME"]


def _tiny_ctc(seed):
    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, vocab_size=29,
        feat_extract_norm="layer", do_stable_layer_norm=True, pad_token_id=0,
    )
    model = Wav2Vec2ForCTC(cfg)
    with torch.no_grad():   # a random head that spells words of "A CAT NO": errors of all kinds
        model.lm_head.bias.fill_(-20.0)
        model.lm_head.bias[CharTokenizer().encode("A CAT NO")] = 0.0
        model.lm_head.bias[0] = 0.2
    return model


def _evaluate(tmp_path, seed):
    rng = np.random.default_rng(0)
    lines = ["ID,duration,wav,spk_id,wrd"]
    for i, w in enumerate(WORDS):
        n = 3200 + 800 * i
        path = tmp_path / f"u{i}.flac"
        sf.write(path, (0.1 * rng.standard_normal(n)).astype("float32"), 16000)
        lines.append(f"u{i},{n / 16000},{path},1,{w}")
    (tmp_path / "test.csv").write_text("\n".join(lines) + "\n")
    tok = CharTokenizer()
    out = tmp_path / f"run{seed}"
    model = _tiny_ctc(seed)
    brain = CTCBrain(modules={"model": model}, run_opts={"device": "cpu"},
                     hparams={"tokenizer": tok, "wer_file": str(out / "wer_{split}.txt"),
                              "feature_cache": None, "log_every": 1,
                              "step_log": str(out / "steps.jsonl"),
                              "encoder_opt_class": lambda p: torch.optim.AdamW(p),
                              "head_opt_class": lambda p: torch.optim.AdamW(p)})
    ds, _ = audio_dataset(tmp_path / "test.csv", required=("wrd",), sorting="ascending")
    add_ctc_targets(ds, tok)
    stats = brain.evaluate_split("test", ds, test_loader_kwargs={"batch_size": 2},
                                 progressbar=False)
    return brain, out, stats


def test_recipe_rates_equal_jiwer_and_compare_reads_them(tmp_path):
    brain, out, stats = _evaluate(tmp_path, seed=0)
    rows = [json.loads(x) for x in (out / "wer_test_utterances.jsonl").read_text().splitlines()]
    assert [r["ID"] for r in rows] == ["u0", "u1", "u2", "u3", "u4"]
    assert set(rows[0]) == {"ID", "ref", "hyp", "word_errors", "ref_words", "char_errors",
                            "ref_chars"}
    assert {r["ref"] for r in rows} == set(WORDS)
    refs, hyps = [r["ref"] for r in rows], [r["hyp"] for r in rows]
    assert any(hyps) and 0 < stats["WER"]
    # what the recipe logs, ranks checkpoints by and writes to JSON is jiwer's
    assert stats["WER"] == pytest.approx(100 * jiwer.wer(refs, hyps))
    assert stats["CER"] == pytest.approx(100 * jiwer.cer(refs, hyps))
    assert json.loads((out / "wer_test.json").read_text()) == pytest.approx(stats)
    for r in rows:
        assert r["word_errors"] == jiwer.process_words(r["ref"], r["hyp"]).wer * r["ref_words"]
    # the numbers SpeechBrain's ErrorRateStats gave before, on the same texts
    sb_wer, sb_cer = ErrorRateStats(), ErrorRateStats()
    ids = [r["ID"] for r in rows]
    sb_wer.append(ids, [h.split() for h in hyps], [r.split() for r in refs])
    sb_cer.append(ids, [list(h) for h in hyps], [list(r) for r in refs])
    assert stats["WER"] == pytest.approx(sb_wer.summarize("error_rate"))
    assert stats["CER"] == pytest.approx(sb_cer.summarize("error_rate"))
    # SpeechBrain's report is still written, with the same total
    report = (out / "wer_test.txt").read_text()
    assert f"%WER {stats['WER']:.2f}" in report
    # compare reads the per-utterance JSON, and an old run's text report alike
    other = tmp_path / "old"
    other.mkdir()
    (other / "wer_test.txt").write_text(report)
    res = compare.compare([out], [other], split="test", resamples=50)
    assert res["WER"]["a"] == pytest.approx(stats["WER"]) == pytest.approx(res["WER"]["b"])
    assert res["CER"]["a"] == pytest.approx(stats["CER"]) == pytest.approx(res["CER"]["b"])


def test_recipe_counts_an_empty_reference(tmp_path, caplog):
    brain = CTCBrain.__new__(CTCBrain)
    brain.hparams = type("H", (), {"wer_file": str(tmp_path / "wer_{split}.txt")})()
    brain.scored = {"ID": ["a", "b"], "ref": ["", "A CAT"], "hyp": ["UM", "A CAT"]}
    with caplog.at_level("WARNING"):
        stats = brain.stage_metrics()
    assert stats == {"WER": 50.0, "CER": 40.0}
    assert "1 of 2 utterances have an empty reference" in caplog.text
    brain.write_stage_files("test", stats)
    assert compare.read_scores(tmp_path, "test")["a"] == dict(
        ref="", word_errors=1, ref_words=0, char_errors=2, ref_chars=0)
