"""A user's hub checkpoint as transformers users run it: vocabulary, feature extractor, head.

Each fixture is the exact file set the hub ships for a CTC fine-tune (config.json,
model.safetensors, vocab.json, tokenizer_config.json, special_tokens_map.json,
preprocessor_config.json) with tiny random weights. The reference is the pipeline users
trust: ``Wav2Vec2FeatureExtractor`` -> ``AutoModelForCTC`` -> argmax ->
``Wav2Vec2CTCTokenizer.batch_decode``.
"""

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import AutoModelForCTC, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

from cald_speech.data.audio import load_audio
from cald_speech.data.hub_tokenizer import HubCTCTokenizer
from cald_speech.errors import DataError
from cald_speech.features import FeatureCache, waveform_settings
from cald_speech.inference import Transcriber, stitch, window_plan
from cald_speech.inference.cli import main as transcribe_main
from cald_speech.student import load_model
from cald_speech.student.cli import main as convert_main
from cald_speech.testing import hub_ctc_folder

#: family / CNN style -> (public shape, config overrides, do_normalize)
CASES = {
    "wav2vec2-group": ("wav2vec2-base", {}, False),
    "wav2vec2-layer-bias-norm": ("wav2vec2-base", {"feat_extract_norm": "layer",
                                                   "conv_bias": True}, True),
    "hubert": ("hubert-large-ll60k", {}, True),
    "wavlm": ("wavlm-base-plus", {}, False),
}


def _wav(seconds, seed=1, offset=0.2):
    g = torch.Generator().manual_seed(seed)
    # an offset and a scale far from unit variance: normalisation changes the output
    return 0.3 * torch.randn(int(16000 * seconds), generator=g) + offset


@pytest.fixture(scope="module", params=sorted(CASES))
def hub(request, tmp_path_factory):
    shape, overrides, norm = CASES[request.param]
    folder = hub_ctc_folder(tmp_path_factory.mktemp(request.param) / "model", shape,
                            do_normalize=norm, **overrides)
    audio = folder.parent / "a.wav"
    sf.write(audio, _wav(1.5).numpy(), 16000, subtype="FLOAT")
    return request.param, folder, audio


def reference(folder, audio, normalize=None):
    """What transformers gives: feature extractor, AutoModelForCTC, argmax, batch_decode."""
    fe = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    if normalize is not None:
        fe.do_normalize = normalize
    tok = Wav2Vec2CTCTokenizer.from_pretrained(folder)
    model = AutoModelForCTC.from_pretrained(folder).eval()
    wav, _ = sf.read(audio, dtype="float32")
    inputs = fe(wav, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ids = model(inputs.input_values).logits.argmax(-1)
    return tok.batch_decode(ids)[0]


def cli_text(capsys, audio, model, *extra):
    assert transcribe_main([str(audio), "--model", str(model), "--no-progress", *extra]) == 0
    path, text = capsys.readouterr().out.rstrip("\n").split("\t", 1)  # FILE<TAB>TEXT
    assert path == str(audio)
    return text.strip()


def test_cald_transcribe_equals_transformers_pipeline(hub, capsys):
    name, folder, audio = hub
    expected = reference(folder, audio)
    assert len(expected.replace(" ", "")) > 10, "the fixture must give a real transcript"
    assert cli_text(capsys, audio, folder) == expected
    if CASES[name][2]:  # normalisation changes this model's output: it must be applied
        assert reference(folder, audio, normalize=False) != expected


def test_student_keeping_every_attention_layer_transcribes_like_the_teacher(hub, tmp_path,
                                                                            capsys):
    _, folder, audio = hub
    keep = [str(i) for i in range(load_model(folder).config.num_hidden_layers)]
    assert convert_main([str(folder), "--output-dir", str(tmp_path / "s"), "--keep-attention",
                         *keep]) == 0
    capsys.readouterr()
    assert cli_text(capsys, audio, tmp_path / "s") == reference(folder, audio)


def test_bimamba2_student_keeps_the_teachers_alphabet_and_input(hub, tmp_path, capsys):
    _, folder, audio = hub
    assert convert_main([str(folder), "--output-dir", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    student = Transcriber.from_pretrained(tmp_path / "s")
    teacher = Transcriber.from_pretrained(folder)
    assert isinstance(student.tokenizer, HubCTCTokenizer)
    assert student.tokenizer == teacher.tokenizer and len(student.tokenizer) == 32
    assert waveform_settings(student.model) == waveform_settings(teacher.model)
    text = student.transcribe_file(audio).text
    symbols = set(teacher.tokenizer.symbols) - {"<pad>", "|"}
    assert text and set(text.replace("<s>", "").replace("</s>", "").replace("<unk>", "")
                        .replace(" ", "")) <= symbols
    assert "|" not in text


def test_word_timestamps_split_at_the_delimiter(hub):
    _, folder, audio = hub
    result = Transcriber.from_pretrained(folder).transcribe_file(audio)
    assert [w.word for w in result.words] == result.text.split()
    assert all(0 <= w.start < w.end <= result.duration + 1e-6 for w in result.words)


@pytest.fixture(scope="module")
def normalising(tmp_path_factory):
    """A layer-norm CNN with conv bias and do_normalize, like wav2vec2-large-lv60."""
    return hub_ctc_folder(tmp_path_factory.mktemp("norm") / "m", "wav2vec2-base",
                          do_normalize=True, feat_extract_norm="layer", conv_bias=True)


def test_one_pass_uses_whole_file_statistics(normalising, tmp_path):
    assert convert_main([str(normalising), "--output-dir", str(tmp_path / "s")]) == 0
    asr = Transcriber.from_pretrained(tmp_path / "s", cnn_block_s=0.25)
    wav = torch.cat([_wav(1.0, seed=2, offset=0.5), 0.1 * _wav(1.0, seed=3, offset=-0.2)])
    one_pass = asr.log_probs(wav, mode="one-pass")
    plain = asr.log_probs(wav, mode="plain")  # the model on the whole normalised file
    torch.testing.assert_close(one_pass, plain, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        x = (wav - wav.mean()) / torch.sqrt(wav.var(correction=0) + 1e-7)
        by_hand = torch.log_softmax(asr.model(x[None]).logits[0], -1)
    torch.testing.assert_close(plain, by_hand, atol=1e-4, rtol=1e-4)


def test_windowed_mode_normalises_each_window(normalising):
    asr = Transcriber.from_pretrained(normalising, window_s=0.5, overlap_s=0.1)
    wav = torch.cat([_wav(0.6, seed=4, offset=0.5), 3.0 * _wav(0.6, seed=5, offset=-0.4)])
    got = asr.log_probs(wav, mode="windowed")
    total = got.shape[0]
    plan = window_plan(total, asr.window_frames, asr.context_frames)
    pieces = []
    for start, end, _, _ in plan:
        stop = wav.numel() if end == total else (end - 1) * asr.stride + asr.receptive_field
        x = wav[start * asr.stride:stop]
        x = (x - x.mean()) / torch.sqrt(x.var(correction=0) + 1e-7)
        with torch.no_grad():
            pieces.append(asr.model(x[None]).logits[0])
    expected = torch.log_softmax(stitch(plan, iter(pieces)), -1)
    assert len(plan) > 1
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_padded_batch_matches_singles_unlike_transformers_unmasked_batches(tmp_path):
    """wav2vec2-base style (group norm, return_attention_mask false): transformers pads
    with zeros and passes no mask; cald-speech's per-utterance CNN and encoder mask give
    each item exactly its single result."""
    folder = hub_ctc_folder(tmp_path / "m", "wav2vec2-base", do_normalize=True)
    asr = Transcriber.from_pretrained(folder)
    wavs = [_wav(1.2, seed=6), _wav(0.6, seed=7)]
    singles = [asr.log_probs(w, mode="plain") for w in wavs]
    batched = asr._batch_log_probs([(0, w, {}, "plain") for w in wavs])
    for a, b in zip(batched, singles):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    fe = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    model = AutoModelForCTC.from_pretrained(folder).eval()
    inputs = fe([w.numpy() for w in wavs], sampling_rate=16000, padding=True,
                return_tensors="pt")
    assert "attention_mask" not in inputs  # transformers' convention for this model
    with torch.no_grad():
        hf = torch.log_softmax(model(inputs.input_values).logits, -1)
    short = singles[1].shape[0]
    assert not torch.allclose(hf[1, :short], singles[1], atol=1e-3)


def test_feature_cache_applies_and_keys_the_normalisation(normalising, tmp_path):
    model = load_model(normalising)
    raw = load_model(normalising)
    from cald_speech.features import set_waveform_settings
    from cald_speech.preprocessor import WaveformSettings

    set_waveform_settings(raw, WaveformSettings())
    cache = FeatureCache(tmp_path / "cache")
    wav = _wav(0.5)
    assert cache.fingerprint(model) != cache.fingerprint(raw)
    feats = cache.features(model, "u1", wav)
    again = cache.features(raw, "u1", wav)  # same id, same audio: not served across keys
    with torch.no_grad():
        x = (wav - wav.mean()) / torch.sqrt(wav.var(correction=0) + 1e-7)
        ref = model.base_model.feature_extractor(x[None])[0]
        ref_raw = model.base_model.feature_extractor(wav[None])[0]
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, ref_raw, atol=1e-5, rtol=1e-5)
    assert cache.hits == 0


def test_packaged_model_carries_vocabulary_and_preprocessor(normalising, tmp_path):
    from cald_speech.student import package_model

    asr = Transcriber.from_pretrained(normalising)
    out = package_model(load_model(normalising), tmp_path / "pkg", asr.tokenizer)
    pre = json.loads((tmp_path / "pkg" / "preprocessor_config.json").read_text())
    assert pre["do_normalize"] is True and pre["sampling_rate"] == 16000
    assert not (tmp_path / "pkg" / "tokenizer.json").exists()
    again = Transcriber.from_pretrained(out)
    assert again.tokenizer == asr.tokenizer
    wav = _wav(1.0)
    torch.testing.assert_close(again.log_probs(wav), asr.log_probs(wav))


# ---------------------------------------------------------------- bad input
def _edit(folder, name, change):
    path = folder / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_vocabulary_of_another_size_than_the_head(normalising, tmp_path):
    folder = _copy(normalising, tmp_path / "m")
    _edit(folder, "vocab.json", lambda v: v.update({"@": 32}))
    with pytest.raises(DataError, match=r"vocab\.json.*33 units.*32 outputs"):
        Transcriber.from_pretrained(folder)


def test_tokenizer_class_that_cannot_be_used(normalising, tmp_path):
    folder = _copy(normalising, tmp_path / "m")
    _edit(folder, "tokenizer_config.json",
          lambda c: c.update(tokenizer_class="Wav2Vec2PhonemeCTCTokenizer"))
    with pytest.raises(DataError, match=r"tokenizer_config\.json.*Wav2Vec2PhonemeCTCTokenizer"):
        Transcriber.from_pretrained(folder)


def test_blank_other_than_id_0(normalising, tmp_path):
    folder = _copy(normalising, tmp_path / "m")

    def swap(v):
        v["<pad>"], v["E"] = v["E"], v["<pad>"]

    _edit(folder, "vocab.json", swap)
    with pytest.raises(DataError, match=r"vocab\.json.*'<pad>' has id 5.*fix: re-order"):
        Transcriber.from_pretrained(folder)


def test_feature_extractor_that_is_not_a_waveform(normalising, tmp_path):
    folder = _copy(normalising, tmp_path / "m")
    _edit(folder, "preprocessor_config.json", lambda p: p.update(feature_size=80))
    with pytest.raises(DataError, match=r"preprocessor_config\.json.*feature_size 80"):
        load_model(folder)


def test_model_of_another_rate_gets_resampled_input(normalising, tmp_path, caplog):
    folder = _copy(normalising, tmp_path / "m")
    _edit(folder, "preprocessor_config.json", lambda p: p.update(sampling_rate=8000))
    audio = tmp_path / "a.wav"
    sf.write(audio, _wav(2.0).numpy(), 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        asr = Transcriber.from_pretrained(folder)
    assert "8000 Hz" in caplog.text
    got = asr.transcribe_file(audio)
    wav8, _ = load_audio(audio, target_sr=8000)
    fe = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    tok = Wav2Vec2CTCTokenizer.from_pretrained(folder)
    model = AutoModelForCTC.from_pretrained(folder).eval()
    with torch.no_grad():
        ids = model(fe(wav8.numpy(), sampling_rate=8000, return_tensors="pt")
                    .input_values).logits.argmax(-1)
    assert got.text == tok.batch_decode(ids)[0] and got.text
    assert got.duration == pytest.approx(2.0, abs=1e-3)
    assert got.words[-1].end <= 2.0 + 1e-6 and got.words[-1].end > 1.0


def test_transcripts_are_mapped_onto_the_vocabulary(normalising):
    tok = HubCTCTokenizer.load(normalising)
    assert tok.decode(tok.encode("it's  a Cat")) == "IT'S A CAT"
    ids = tok.encode("naïve 42")
    assert tok.unknown == {"Ï": 1, "4": 1, "2": 1}
    assert ids.count(tok.unk_id) == 3
    expected = Wav2Vec2CTCTokenizer.from_pretrained(normalising)("IT'S A CAT").input_ids
    assert tok.encode("it's a cat") == expected
    assert np.array_equal(tok.decode_ctc([0, 7, 7, 0, 4, 6]), "A T")


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("rate", [16000, 8000])
def test_training_inputs_follow_the_models_settings(normalising, tmp_path, cached, rate):
    """Training batches (16 kHz corpus) reach the model as transformers' feature extractor
    would give each utterance alone: resampled to its rate, normalised."""
    from types import SimpleNamespace

    from cald_speech.data.audio import resample
    from cald_speech.distill.brain import DistillBrain
    from cald_speech.features import enable_feature_input, set_waveform_settings
    from cald_speech.preprocessor import WaveformSettings

    model = load_model(normalising)
    set_waveform_settings(model, WaveformSettings(sampling_rate=rate, do_normalize=True))
    enable_feature_input(model)
    wavs = [_wav(0.5, seed=8), _wav(0.3, seed=9, offset=-0.3)]
    padded = torch.zeros(2, wavs[0].numel())
    padded[0], padded[1, : wavs[1].numel()] = wavs[0], wavs[1]
    rel = torch.tensor([1.0, wavs[1].numel() / wavs[0].numel()])
    batch = SimpleNamespace(sig=(padded, rel), id=["a", "b"])
    brain = SimpleNamespace(device="cpu", sample_lengths=DistillBrain.sample_lengths,
                            hparams=SimpleNamespace(
                                feature_cache=FeatureCache(tmp_path / "c") if cached else None))
    inputs, mask = DistillBrain.model_inputs(brain, batch, model)
    with torch.no_grad():
        got = model(inputs, attention_mask=mask).logits
        for i, w in enumerate(wavs):
            x = resample(w, 16000, rate)
            x = (x - x.mean()) / torch.sqrt(x.var(correction=0) + 1e-7)
            assert int(mask[i].sum()) == x.numel()
            ref = model(x[None]).logits[0]
            torch.testing.assert_close(got[i, : ref.shape[0]], ref, atol=1e-4, rtol=1e-4)
