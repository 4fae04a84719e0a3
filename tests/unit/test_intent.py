"""Intent head and model: padding-invariant pooling, labels, metrics, save/load."""

import json

import pytest
import torch

from cald_speech.errors import ConfigError, DataError
from cald_speech.features import FeatureCache, base_model, enable_feature_input
from cald_speech.student import Student, convert
from cald_speech.tasks.intent.brain import classification_loss
from cald_speech.tasks.intent.labels import LabelMaps, count_unknown
from cald_speech.tasks.intent.metrics import IntentMetrics
from cald_speech.tasks.intent.model import (
    AttentivePooling,
    IntentModel,
    MaskedMeanPooling,
    bare_encoder,
    is_intent_model,
    load_encoder,
)
from cald_speech.testing import tiny_teacher

PARTS = {
    "alarm_set": ("alarm", "set"),
    "alarm_query": ("alarm", "query"),
    "play_music": ("play", "music"),
    "weather_query": ("weather", "query"),
}


def labels():
    return LabelMaps(PARTS)


def encoder(head="model", seed=0):
    # layer-norm CNN and stable layer norm: a padded batch equals its utterances alone
    return tiny_teacher("wav2vec2-large-lv60", head=head, seed=seed, feat_extract_norm="layer",
                        mask_time_prob=0.0, layerdrop=0.0)


def model(tasks=("scenario", "action"), pooling="mean", head="model", seed=0):
    torch.manual_seed(seed)
    return IntentModel.new(encoder(head, seed), labels(), tasks, pooling).eval()


def padded(wavs):
    n = max(w.shape[0] for w in wavs)
    x = torch.zeros(len(wavs), n)
    mask = torch.zeros(len(wavs), n, dtype=torch.long)
    for i, w in enumerate(wavs):
        x[i, : w.shape[0]] = w
        mask[i, : w.shape[0]] = 1
    return x, mask


WAVS = [torch.randn(3200, generator=torch.Generator().manual_seed(i)) * 0.1
        for i in range(3)]
WAVS[1] = WAVS[1][:1700]
WAVS[2] = WAVS[2][:2500]


@pytest.mark.parametrize("pool_cls", [MaskedMeanPooling, lambda: AttentivePooling(6, 5)])
def test_pooling_padded_batch_equals_singles(pool_cls):
    torch.manual_seed(0)
    pool = pool_cls()
    seqs = [torch.randn(n, 6) for n in (7, 3, 5)]
    x = torch.full((3, 7, 6), 123.0)  # garbage in the padding
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
        mask[i, : len(s)] = True
    batch = pool(x, mask)
    for i, s in enumerate(seqs):
        single = pool(s[None], torch.ones(1, len(s), dtype=torch.bool))
        torch.testing.assert_close(batch[i], single[0], rtol=1e-5, atol=1e-6)


def test_masked_mean_is_the_mean_of_valid_frames():
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = MaskedMeanPooling()(x, mask)
    torch.testing.assert_close(out[0], x[0, :2].mean(0))
    torch.testing.assert_close(out[1], x[1].mean(0))


def test_attentive_pooling_gives_padding_zero_weight():
    torch.manual_seed(0)
    pool = AttentivePooling(4, 8)
    x = torch.randn(1, 6, 4)
    mask = torch.tensor([[True, True, True, True, False, False]])
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, 4) * 1e4
    torch.testing.assert_close(pool(x, mask), pool(y, mask))
    # not a plain mean: the scores weigh the frames
    assert not torch.allclose(pool(x, mask), MaskedMeanPooling()(x, mask))
    # an all-padding row pools to zeros, not NaN
    assert torch.equal(pool(x, torch.zeros(1, 6, dtype=torch.bool)), torch.zeros(1, 4))


@pytest.mark.parametrize("pooling", ["mean", "attentive"])
@pytest.mark.parametrize("tasks", [("intent",), ("scenario", "action")])
def test_model_padded_batch_equals_singles(pooling, tasks):
    m = model(tasks, pooling)
    x, mask = padded(WAVS)
    with torch.no_grad():
        batch = m(x, attention_mask=mask).logits
        for i, w in enumerate(WAVS):
            single = m(w[None], attention_mask=torch.ones(1, w.shape[0], dtype=torch.long))
            torch.testing.assert_close(batch[i], single.logits[0], rtol=1e-4, atol=1e-5)


def test_model_hidden_states_align_with_teacher_and_student():
    teacher = model(head="ctc")
    student_enc = convert(teacher.encoder, mixer="bimamba2")
    student = IntentModel(student_enc, teacher.head, teacher.labels).eval()
    x, mask = padded(WAVS)
    t = teacher(x, attention_mask=mask, output_hidden_states=True)
    s = student(x, attention_mask=mask, output_hidden_states=True)
    assert len(t.hidden_states) == len(s.hidden_states) == teacher.config.num_hidden_layers + 1
    assert [h.shape for h in t.hidden_states] == [h.shape for h in s.hidden_states]
    # the layer before any attention is shared
    torch.testing.assert_close(t.hidden_states[0], s.hidden_states[0])
    assert t.frame_mask.sum(1).tolist() == s.frame_mask.sum(1).tolist()


def test_base_model_reaches_the_transformers_encoder():
    for enc in (encoder("ctc"), convert(encoder("ctc"), mixer="attention")):
        m = IntentModel.new(enc, labels())
        inner = base_model(m)
        assert type(inner).__name__ == "Wav2Vec2Model" and hasattr(inner, "feature_extractor")
        assert not hasattr(m.encoder, "lm_head")  # CTC head dropped
        inner.freeze_feature_encoder()
        assert not any(p.requires_grad for p in inner.feature_extractor.parameters())
        # features from the cache give the same logits as waveforms
        enable_feature_input(m)
        m.eval()
        x, mask = padded(WAVS)
        feats, fmask = FeatureCache(None).batch(m, ["a", "b", "c"], WAVS)
        with torch.no_grad():
            torch.testing.assert_close(m(feats, attention_mask=fmask).logits,
                                       m(x, attention_mask=mask).logits, rtol=1e-4, atol=1e-5)


def test_bare_encoder_of_student_keeps_mixers_and_rejects_unsupported():
    student = convert(encoder("ctc"), mixer="bimamba2")
    enc = bare_encoder(student)
    assert isinstance(enc, Student) and enc.layer_kinds() == student.layer_kinds()
    with pytest.raises(ConfigError, match="unsupported"):
        bare_encoder(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kind", ["transformer", "student"])
def test_save_load_gives_identical_logits(tmp_path, kind):
    m = model(pooling="attentive")
    if kind == "student":
        m = IntentModel(convert(m.encoder, mixer="bimamba2"), m.head, m.labels).eval()
    m.save_pretrained(tmp_path / "m")
    assert is_intent_model(tmp_path / "m")
    again = IntentModel.from_pretrained(tmp_path / "m")
    assert again.labels == m.labels and again.head.pooling == "attentive"
    assert isinstance(again.encoder, Student) == (kind == "student")
    x, mask = padded(WAVS)
    with torch.no_grad():
        assert torch.equal(m(x, attention_mask=mask).logits, again(x, attention_mask=mask).logits)
    # the encoder alone loads too (e.g. as the start of another run)
    assert type(base_model(load_encoder(tmp_path / "m"))).__name__ == "Wav2Vec2Model"


def test_load_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="no such model folder"):
        IntentModel.from_pretrained(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="not an intent model folder"):
        IntentModel.from_pretrained(tmp_path / "half")
    with pytest.raises(DataError, match="model folder not found"):
        load_encoder(tmp_path / "nothing")


def test_label_map_round_trip(tmp_path):
    rows = [{"intent": k, "scenario": s, "action": a} for k, (s, a) in PARTS.items()]
    lab = LabelMaps.from_rows(rows[::-1] + rows)
    assert lab == labels()
    assert lab.labels("scenario") == ["alarm", "play", "weather"]
    assert lab.labels("action") == ["music", "query", "set"]
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(lab.to_dict()))
    again = LabelMaps.from_dict(json.loads(path.read_text()))
    assert again == lab
    for task in ("intent", "scenario", "action"):
        assert [again.index(task, x) for x in lab.labels(task)] == list(range(lab.num_labels(task)))
    assert again.intent_of("alarm", "set") == "alarm_set"
    assert again.intent_of("alarm", "music") == "alarm_music"  # unseen pair
    with pytest.raises(DataError, match="appears as"):
        LabelMaps.from_rows(rows + [{"intent": "alarm_set", "scenario": "x", "action": "y"}])


def test_unknown_labels_are_counted_and_left_out_of_the_loss():
    lab = labels()
    rows = [
        {"intent": "alarm_set", "scenario": "alarm", "action": "set"},
        {"intent": "alarm_snooze", "scenario": "alarm", "action": "snooze"},  # only in test
        {"intent": "cooking_recipe", "scenario": "cooking", "action": "recipe"},
    ]
    unk = count_unknown(rows, lab)
    assert (unk["items"], unk["intent"], unk["scenario"], unk["action"]) == (2, 2, 1, 2)
    assert unk["labels"]["intent"] == ["alarm_snooze", "cooking_recipe"]

    logits = torch.randn(3, 4, requires_grad=True)
    targets = {"intent": torch.tensor([lab.index("intent", r["intent"]) for r in rows])}
    loss = classification_loss({"intent": logits}, targets, torch.ones(3, dtype=torch.bool))
    loss.backward()
    assert logits.grad[1:].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
    ref = torch.nn.functional.cross_entropy(logits[:1], targets["intent"][:1])
    torch.testing.assert_close(loss, ref)
    # nothing known: zero, not NaN
    none = classification_loss({"intent": logits}, {"intent": torch.full((3,), -1)},
                               torch.ones(3, dtype=torch.bool))
    assert float(none.detach()) == 0.0

    m = IntentMetrics(lab)
    hyps = [dict(rows[0]), dict(rows[0]), dict(rows[0])]
    m.append(["a", "b", "c"], rows, hyps)
    s = m.summarize()
    assert s["unknown_intent"] == 2 and s["unknown_scenario"] == 1
    assert s["intent_acc"] == pytest.approx(100 / 3) and s["scenario_acc"] == pytest.approx(200 / 3)


def test_two_head_and_one_head_predictions_and_metrics():
    lab = labels()
    two = model(("scenario", "action"))
    one = model(("intent",))
    # two heads: scenario 'alarm' (0) + action 'query' (1) -> alarm_query;
    # an unseen pair: 'play' + 'set' -> play_set (an intent train never had)
    logits_two = torch.tensor([[9.0, 0, 0, 0, 9, 0], [0, 9, 0, 0, 0, 9]])
    pred_two = two.predict(logits_two)
    assert pred_two[0] == {"intent": "alarm_query", "scenario": "alarm", "action": "query"}
    assert pred_two[1] == {"intent": "play_set", "scenario": "play", "action": "set"}
    # one head: intents sorted: alarm_query, alarm_set, play_music, weather_query
    logits_one = torch.tensor([[0.0, 0, 0, 9], [0, 9, 0, 0]])
    pred_one = one.predict(logits_one)
    assert pred_one[0] == {"intent": "weather_query", "scenario": "weather", "action": "query"}
    assert pred_one[1]["intent"] == "alarm_set"

    refs = [{"intent": "alarm_query", "scenario": "alarm", "action": "query"},
            {"intent": "play_music", "scenario": "play", "action": "music"}]
    m2, m1 = IntentMetrics(lab), IntentMetrics(lab)
    m2.append(["a", "b"], refs, pred_two)
    m1.append(["a", "b"], refs, pred_one)
    s2, s1 = m2.summarize(), m1.summarize()
    # two heads: item a all right; item b scenario right, action and intent wrong
    assert (s2["intent_acc"], s2["scenario_acc"], s2["action_acc"], s2["sa_acc"]) == (
        50.0, 100.0, 50.0, 75.0)
    # one head: item a wrong scenario, right action; item b all wrong
    assert (s1["intent_acc"], s1["scenario_acc"], s1["action_acc"], s1["sa_acc"]) == (
        0.0, 0.0, 50.0, 25.0)
    assert m2.confusions() == [("play_music", "play_set", 1)]


def test_metrics_files(tmp_path):
    lab = labels()
    m = IntentMetrics(lab)
    ref = {"intent": "alarm_set", "scenario": "alarm", "action": "set"}
    wrong = {"intent": "alarm_query", "scenario": "alarm", "action": "query"}
    m.append(["a", "b", "c", "d"], [ref] * 4, [wrong, wrong, ref, None])
    m.write(tmp_path / "intent_test.txt", "test", {"loss": 1.5})
    stats = json.loads((tmp_path / "intent_test.json").read_text())
    assert stats["intent_acc"] == 25.0 and stats["unreadable"] == 1 and stats["loss"] == 1.5
    assert stats["confusions"][0] == ["alarm_set", "alarm_query", 2]
    text = (tmp_path / "intent_test_confusions.txt").read_text()
    assert "alarm_set -> alarm_query  2  (50.0% of alarm_set)" in text
    assert "sa_acc" in (tmp_path / "intent_test.txt").read_text()


def test_head_must_match_labels_and_encoder():
    enc = encoder()
    good = IntentModel.new(enc, labels())
    with pytest.raises(ConfigError, match="label maps hold"):
        IntentModel(enc, good.head, LabelMaps({"a_b": ("a", "b")}))
    with pytest.raises(ConfigError, match="unknown pooling"):
        IntentModel.new(enc, labels(), pooling="max")
