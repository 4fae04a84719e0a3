"""cald-bench compare: per-utterance errors read back from the recipe's files, paired bootstrap."""

import json

import pytest
from speechbrain.utils.metric_stats import ErrorRateStats

from cald_speech.bench import cli, compare
from cald_speech.errors import CaldError

REFS = {
    "u1": "THE CAT SAT ON THE MAT",
    "u2": "A DOG",
    "u3": "IT IS RAINING AGAIN TODAY",
    "u4": "HELLO",
}


def _run(folder, hyps, split="test-clean", refs=REFS):
    """A run folder with the files the CTC recipe writes: wer_<split>.txt and the CER."""
    folder.mkdir(parents=True, exist_ok=True)
    wer, cer = ErrorRateStats(), ErrorRateStats()
    ids = list(refs)
    hyp_words = [hyps[u].split() for u in ids]
    ref_words = [refs[u].split() for u in ids]
    wer.append(ids, hyp_words, ref_words)
    cer.append(ids, [list(" ".join(h)) for h in hyp_words], [list(" ".join(r)) for r in ref_words])
    with open(folder / f"wer_{split}.txt", "w") as f:
        wer.write_stats(f)
    return folder, wer.summarize("error_rate"), cer.summarize("error_rate")


GOOD = {"u1": "THE CAT SAT ON A MAT", "u2": "A DOG", "u3": "IT IS RAINING AGAIN",
        "u4": "HELLO"}
BAD = {"u1": "THE CAT SAD ON A MAP", "u2": "", "u3": "IT IS RAINING A GAIN TO DAY",
       "u4": "YELLOW"}


def test_rates_read_back_equal_the_recipe_metrics(tmp_path):
    (a, a_wer, a_cer), (b, b_wer, b_cer) = _run(tmp_path / "a", GOOD), _run(tmp_path / "b", BAD)
    assert compare.read_alignments(a / "wer_test-clean.txt")["u3"] == (REFS["u3"], GOOD["u3"])
    assert compare.read_alignments(b / "wer_test-clean.txt")["u2"] == (REFS["u2"], "")
    out = compare.compare([a], [b], resamples=500)
    assert out["WER"]["a"] == pytest.approx(a_wer) and out["WER"]["b"] == pytest.approx(b_wer)
    assert out["CER"]["a"] == pytest.approx(a_cer) and out["CER"]["b"] == pytest.approx(b_cer)
    # A is at least as good on every utterance and better on three: every draw agrees.
    assert out["WER"]["a_better"] > 0.9 and out["WER"]["ci95"][1] <= 0
    assert out["WER"]["a_minus_b"] == pytest.approx(a_wer - b_wer)


def test_paired_bootstrap_is_symmetric_and_seeded():
    ea, eb, tot = [1, 0, 3, 2, 5], [2, 1, 1, 2, 6], [10, 8, 12, 9, 20]
    ab = compare.paired_bootstrap(ea, eb, tot, resamples=2000, seed=3)
    ba = compare.paired_bootstrap(eb, ea, tot, resamples=2000, seed=3)
    assert ab["a_minus_b"] == pytest.approx(-ba["a_minus_b"])
    assert ab["a_better"] == pytest.approx(ba["b_better"])
    assert ab["ci95"] == pytest.approx([-v for v in reversed(ba["ci95"])])
    assert ab == compare.paired_bootstrap(ea, eb, tot, resamples=2000, seed=3)
    same = compare.paired_bootstrap(ea, ea, tot, resamples=200)
    assert same["a_better"] == same["b_better"] == 0.0 and same["ci95"] == [0.0, 0.0]


def test_runs_are_paired_in_order_and_pooled(tmp_path):
    a1, b1 = _run(tmp_path / "a1", GOOD)[0], _run(tmp_path / "b1", BAD)[0]
    a2, b2 = _run(tmp_path / "a2", BAD)[0], _run(tmp_path / "b2", GOOD)[0]
    out = compare.compare([a1, a2], [b1, b2], resamples=300)
    assert out["WER"]["utterances"] == 8
    assert out["WER"]["a_minus_b"] == pytest.approx(0.0)  # the swap cancels out


def test_bad_input_is_named(tmp_path):
    a = _run(tmp_path / "a", GOOD)[0]
    other = dict(REFS, u2="A CAT")
    b = _run(tmp_path / "b", BAD, refs=other)[0]
    with pytest.raises(CaldError, match="u2 has different references"):
        compare.compare([a], [b])
    with pytest.raises(CaldError, match="split 'dev-clean'.*--split: test-clean"):
        compare.compare([a], [a], split="dev-clean")
    with pytest.raises(CaldError, match="same number of runs"):
        compare.compare([a, a], [a])


def test_cli_prints_and_writes_json(tmp_path, capsys):
    a, b = _run(tmp_path / "a", GOOD)[0], _run(tmp_path / "b", BAD)[0]
    code = cli.main(["compare", "--a", str(a), "--b", str(b), "--resamples", "200",
                     "--out-dir", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "A better in % of draws" in printed and "4 paired utterances" in printed
    doc = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert doc["CER"]["resamples"] == 200 and "machine" in doc
    assert cli.main(["compare", "--a", str(a), "--b", str(tmp_path / "none")]) == 1


def _intent_run(folder, hyps):
    """An intent recipe run's test files, written by the recipe's own IntentMetrics."""
    from cald_speech.tasks.intent.labels import LabelMaps
    from cald_speech.tasks.intent.metrics import IntentMetrics

    labels = LabelMaps({i: tuple(i.split("_", 1)) for i in INTENTS})
    m = IntentMetrics(labels)
    lab = [None if i is None else dict(zip(("intent", "scenario", "action"),
                                           (i, *i.split("_", 1)))) for i in hyps]
    m.append([f"r{k}" for k in range(len(hyps))], [_lab(i) for i in REF_INTENTS], lab)
    return folder, m.write(folder / "intent_test.txt", "test")


INTENTS = ["alarm_set", "alarm_query", "play_music", "play_radio", "email_query"]
REF_INTENTS = ["alarm_set", "alarm_query", "play_music", "play_radio", "email_query"] * 4


def _lab(i):
    return dict(zip(("intent", "scenario", "action"), (i, *i.split("_", 1))))


def test_intent_runs_compare_accuracies_like_the_recipe(tmp_path):
    good = list(REF_INTENTS)
    good[1], good[7] = "alarm_set", "play_music"      # 2 intent errors, 1 scenario error
    bad = list(REF_INTENTS)
    for k in (0, 2, 3, 5, 9, 12):                     # 6 errors of every kind, 1 unreadable
        bad[k] = "email_query" if k != 9 else None
    (a, sa), (b, sb) = _intent_run(tmp_path / "a", good), _intent_run(tmp_path / "b", bad)
    out = compare.compare([a], [b], split="test", resamples=1000)
    assert out["task"] == "intent"
    assert out["metrics"] == ["intent_acc", "scenario_acc", "action_acc", "sa_acc"]
    for name in out["metrics"]:
        assert out[name]["a"] == pytest.approx(sa[name]) and out[name]["b"] == pytest.approx(
            sb[name]), name
        assert out[name]["a_minus_b"] == pytest.approx(sa[name] - sb[name])
        lo, hi = out[name]["ci95"]
        assert lo <= out[name]["a_minus_b"] <= hi
    assert out["intent_acc"]["a_better"] > 0.9 and out["intent_acc"]["ci95"][0] >= 0
    # an older run without the items file: intent accuracy from intent_test.txt alone
    (a / "intent_test_items.jsonl").unlink()
    old = compare.compare([a], [b], split="test", resamples=1000)
    assert old["metrics"] == ["intent_acc"]
    assert old["intent_acc"]["a"] == pytest.approx(sa["intent_acc"])
    assert old["intent_acc"]["a_minus_b"] == pytest.approx(out["intent_acc"]["a_minus_b"])


def test_intent_and_ctc_runs_are_not_mixed(tmp_path):
    a = _intent_run(tmp_path / "a", list(REF_INTENTS))[0]
    c = _run(tmp_path / "c", GOOD, split="test")[0]
    with pytest.raises(CaldError, match="mix CTC and intent"):
        compare.compare([a], [c], split="test")
    other = _intent_run(tmp_path / "o", list(REF_INTENTS))[0]
    items = (other / "intent_test_items.jsonl").read_text().replace('"ID": "r', '"ID": "x')
    (other / "intent_test_items.jsonl").write_text(items)
    with pytest.raises(CaldError, match="no test items in common"):
        compare.compare([a], [other], split="test")
