"""Inference: blockwise CNN, one-pass student, windowed teacher, alignment, formats, CLI."""

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from cald_speech.data.audio import load_audio
from cald_speech.data.tokenizer import CharTokenizer
from cald_speech.errors import AudioError, ConfigError, DataError
from cald_speech.features import enable_feature_input, frame_lengths
from cald_speech.inference import (
    Transcriber,
    Transcript,
    Word,
    align_words,
    bimamba2_blockwise,
    cnn_features,
    cnn_geometry,
    lean_ctc_logits,
    lean_supported,
    long_form,
    main,
    stitch,
    window_plan,
)
from cald_speech.mixers.bimamba2 import BiMamba2, BiMamba2Shared
from cald_speech.student import FRAME_MASK_IMPLEMENTATION, convert, encoder_layers, package_model
from cald_speech.testing import tiny_teacher

SR = 16000


def _wav(seconds, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(int(seconds * SR), generator=g) * scale


@pytest.fixture(scope="module")
def teachers():
    return {norm: tiny_teacher(head="ctc", vocab_size=29, feat_extract_norm=norm)
            for norm in ("group", "layer")}


@pytest.fixture(scope="module")
def student(teachers):
    return convert(teachers["group"]).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, teachers, student):
    root = tmp_path_factory.mktemp("models")
    return {
        "teacher": package_model(teachers["group"], root / "teacher", CharTokenizer()),
        "student": package_model(student, root / "student", CharTokenizer()),
    }


# ----------------------------------------------------------------------- CNN in blocks
@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("seconds,block", [(2.0, 97), (0.0513, 1), (0.2, 5000)])
def test_blockwise_cnn_equals_one_shot(teachers, norm, seconds, block):
    model = teachers[norm]
    wav = _wav(seconds, seed=3) + 0.05  # a DC offset makes the group-norm mean matter
    with torch.no_grad():
        whole = model.wav2vec2.feature_extractor(wav[None])[0]
    blocks = cnn_features(model, wav, block_frames=block)
    assert blocks.shape == whole.shape
    assert torch.allclose(blocks, whole, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("k", [1, 3])
def test_local_group_norm_statistics(teachers, k):
    # With norm_blocks=k, block i is normalised with the statistics of the layer-0
    # frames of the k pieces centred on it (piece j = the layer-0 frames that start in
    # block j); the reference takes them straight from one conv0 pass in float64.
    model = teachers["group"]
    layers = model.wav2vec2.feature_extractor.conv_layers
    field_, stride = cnn_geometry(model.config)
    s0 = layers[0].conv.stride[0]
    wav = _wav(2.0, seed=3) + 0.05
    wav[8000:] *= 4.0  # louder second half: the statistics differ along the file
    total, block = int(frame_lengths(model, wav.numel())), 97
    local = cnn_features(model, wav, block_frames=block, norm_blocks=k)
    whole = cnn_features(model, wav, block_frames=block)
    assert local.shape == whole.shape
    assert not torch.allclose(local, whole, atol=1e-3)
    with torch.no_grad():
        h0 = layers[0].conv(wav[None, None])[0].double()  # (C, T0)
        piece = block * stride // s0
        n_pieces = -(-h0.shape[-1] // piece)
        norm = layers[0].layer_norm
        for i, a in enumerate(range(0, total, block)):
            b = min(a + block, total)
            lo = min(max(0, i - (k - 1) // 2), n_pieces - k)
            span = h0[:, lo * piece:(lo + k) * piece]
            mean, var = span.mean(-1, keepdim=True), span.var(-1, correction=0, keepdim=True)
            x = layers[0].conv(wav[a * stride:(b - 1) * stride + field_][None, None]).double()
            x = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, None] + norm.bias[:, None]
            x = layers[0].activation(x.float())
            for layer in layers[1:]:
                x = layer(x)
            torch.testing.assert_close(local[:, a:b], x[0], atol=2e-5, rtol=1e-4)
        # as many blocks as the input has, or a layer-norm CNN: whole-input statistics
        torch.testing.assert_close(cnn_features(model, wav, block, norm_blocks=n_pieces), whole)
        layer_cnn = teachers["layer"]
        torch.testing.assert_close(cnn_features(layer_cnn, wav, block, norm_blocks=k),
                                   cnn_features(layer_cnn, wav, block))


def test_one_pass_normalises_locally_unless_told_otherwise(student):
    wav = _wav(2.0, seed=1)
    wav[16000:] *= 5.0
    kw = dict(encoder_block=256, cnn_block_s=0.3)
    exact = Transcriber(student, CharTokenizer(), norm_window_s=0, **kw)
    assert exact.norm_blocks is None
    plain = exact.log_probs(wav, mode="plain")
    torch.testing.assert_close(exact.log_probs(wav, mode="one-pass"), plain,
                               atol=1e-4, rtol=1e-4)
    local = Transcriber(student, CharTokenizer(), norm_window_s=0.6, **kw)
    assert local.norm_blocks == 2
    feats = cnn_features(student, wav, local.cnn_block, norm_blocks=2)
    with torch.no_grad(), long_form(student, block=256):
        expected = torch.log_softmax(student(feats[None]).logits[0].float(), dim=-1)
    one = local.log_probs(wav, mode="one-pass")
    torch.testing.assert_close(one, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(one, plain, atol=1e-3)
    # files of at most two CNN blocks keep whole-file statistics
    short = _wav(0.5, seed=2)
    torch.testing.assert_close(local.log_probs(short, mode="one-pass"),
                               exact.log_probs(short, mode="one-pass"))
    with pytest.raises(ConfigError, match="norm_window_s"):
        Transcriber(student, CharTokenizer(), norm_window_s=-1.0)


def test_cnn_geometry_matches_frame_lengths(teachers):
    model = teachers["layer"]
    field_, stride = cnn_geometry(model.config)
    assert (field_, stride) == (40, 20)  # kernels (10, 3, 3), strides (5, 2, 2)
    for n in (40, 41, 59, 60, 61, 1000, 16001):
        assert int(frame_lengths(model, n)) == (n - field_) // stride + 1
    assert cnn_features(model, torch.zeros(field_ - 1)).shape[-1] == 0


# ----------------------------------------------------------------------- one-pass student
def test_bimamba2_blockwise_equals_plain_call():
    torch.manual_seed(0)
    x = torch.randn(1, 101, 32)
    # expand=2: the shared mixer's out_proj changes the width (not done in place)
    for cls, combine, expand in ((BiMamba2, "sum", 1), (BiMamba2Shared, "mean", 1),
                                 (BiMamba2Shared, "sum", 2)):
        m = cls(32, 4, d_state=8, chunk_size=16, combine=combine, expand=expand).eval()
        with torch.no_grad():
            ref = m(x)
            for block in (3, 32, 500):
                assert torch.allclose(bimamba2_blockwise(m, x, block), ref, atol=1e-5)


@pytest.mark.parametrize("cache_blocks, projections", [(0, 8), (2, 6), (99, 4)])
def test_shared_mixer_reuses_projections_within_budget(cache_blocks, projections,
                                                       monkeypatch):
    # 101 frames in blocks of 32: 4 blocks. The backward scan takes the forward scan's
    # in_proj features of the last `cache_blocks` blocks and projects only the rest.
    from cald_speech.mixers.mamba2 import _SSMCore

    torch.manual_seed(0)
    m = BiMamba2Shared(32, 4, d_state=8, chunk_size=16).double().eval()
    x = torch.randn(1, 101, 32, dtype=torch.float64)
    calls = []
    project = _SSMCore.project

    def counting(self, in_proj, u):
        calls.append(u.shape[1])
        return project(self, in_proj, u)

    monkeypatch.setattr(_SSMCore, "project", counting)
    block_mb = 32 * (m.fwd.d_in_proj * 8) / 2**20  # one full block of float64 features
    with torch.no_grad():
        ref = m(x)
        calls.clear()
        out = bimamba2_blockwise(m, x, 32, projection_cache_mb=cache_blocks * block_mb)
    assert len(calls) == projections
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_one_pass_student_equals_plain_run(student):
    asr = Transcriber(student, CharTokenizer(), encoder_block=256, cnn_block_s=0.3)
    assert asr.default_mode(SR * 3600) == "one-pass"
    wav = _wav(2.0, seed=1)  # 1599 frames: 7 encoder blocks, 7 CNN blocks
    plain = asr.log_probs(wav, mode="plain")
    one = asr.log_probs(wav, mode="one-pass")
    assert one.shape == plain.shape == (1599, 29)
    assert torch.allclose(one, plain, atol=1e-4)
    tok = asr.tokenizer
    assert tok.decode_ctc(one.argmax(-1)) == tok.decode_ctc(plain.argmax(-1))


def test_one_pass_builds_no_square_mask(student):
    assert student.config._attn_implementation == FRAME_MASK_IMPLEMENTATION
    seen = []
    layers = encoder_layers(student.model)

    def record(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        seen.append(None if mask is None else tuple(mask.shape))

    hooks = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    try:
        feats = cnn_features(student, _wav(1.0))
        with torch.no_grad(), long_form(student, block=64):
            student(feats[None])
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(layers)
    assert all(s is None or len(s) == 2 for s in seen)
    # the modules swapped for the long pass are back
    assert type(layers[0].feed_forward).__name__.endswith("FeedForward")


@pytest.mark.parametrize("shape,lean", [("wav2vec2-base", True), ("hubert-large-ll60k", False),
                                        ("wavlm-base-plus", False), ("wav2vec2-large-lv60", False)])
@pytest.mark.parametrize("mixer", ["bimamba2", "bimamba2_shared", "linear_attention"])
def test_one_pass_of_every_family_and_mixer_equals_plain(shape, lean, mixer):
    teacher = tiny_teacher(shape, head="ctc", vocab_size=29, feat_proj_layer_norm=False) \
        if shape.startswith("hubert") else tiny_teacher(shape, head="ctc", vocab_size=29)
    student = convert(teacher, mixer=mixer).eval()
    assert lean_supported(student) == lean
    asr = Transcriber(student, CharTokenizer(), encoder_block=64, cnn_block_s=0.3)
    wav = _wav(1.2, seed=4)
    torch.testing.assert_close(asr.log_probs(wav, mode="one-pass"),
                               asr.log_probs(wav, mode="plain"), atol=1e-4, rtol=1e-4)


def test_lean_pass_equals_long_form_and_releases_the_features(student):
    wav = _wav(2.0, seed=5)
    enable_feature_input(student)
    feats = cnn_features(student, wav)
    with torch.no_grad(), long_form(student, block=128):
        reference = student(feats[None]).logits[0]
    holder = [feats.clone()]
    with torch.no_grad():
        lean = lean_ctc_logits(student, holder, block=128)
    assert holder == []  # the caller's only reference is gone: the features can be freed
    torch.testing.assert_close(lean, reference, atol=1e-5, rtol=1e-5)


def test_hubert_post_norm_students_take_the_lean_pass():
    teacher = tiny_teacher("wav2vec2-base", head="ctc", vocab_size=29)
    from transformers import HubertConfig, HubertForCTC
    cfg = HubertConfig(**{k: v for k, v in teacher.config.to_dict().items()
                          if k not in ("model_type", "architectures")})
    torch.manual_seed(0)
    student = convert(HubertForCTC(cfg).eval()).eval()
    assert lean_supported(student)
    asr = Transcriber(student, CharTokenizer(), encoder_block=64, cnn_block_s=0.3)
    wav = _wav(1.2, seed=6)
    torch.testing.assert_close(asr.log_probs(wav, mode="one-pass"),
                               asr.log_probs(wav, mode="plain"), atol=1e-4, rtol=1e-4)


def test_other_mixers_fall_back_to_whole_sequence(teachers):
    model = convert(teachers["layer"], mixer="linear_attention").eval()
    asr = Transcriber(model, CharTokenizer(), encoder_block=64)
    wav = _wav(1.0, seed=2)
    assert torch.allclose(asr.log_probs(wav, mode="one-pass"), asr.log_probs(wav, mode="plain"),
                          atol=1e-4)


# ----------------------------------------------------------------------- windowed teacher
def test_windowed_teacher_with_window_covering_input_equals_plain(teachers):
    asr = Transcriber(teachers["group"], CharTokenizer(), window_s=5.0, overlap_s=0.5)
    wav = _wav(3.0, seed=4)
    assert asr.default_mode(wav.numel()) == "plain"
    assert torch.allclose(asr.log_probs(wav, mode="windowed"), asr.log_probs(wav, mode="plain"),
                          atol=1e-5)


@pytest.mark.parametrize("total,window,context", [(25, 10, 2), (1000, 97, 13), (98, 97, 0),
                                                  (5, 97, 13), (301, 30, 14)])
def test_window_plan_tiles_and_stitches(total, window, context):
    plan = window_plan(total, window, context)
    keeps = [(k0, k1) for _, _, k0, k1 in plan]
    assert keeps[0][0] == 0 and keeps[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(keeps, keeps[1:]))
    for s, e, k0, k1 in plan:
        assert e - s <= window and s <= k0 < k1 <= e
        assert k0 - s >= context or s == 0
        assert e - k1 >= context or e == total
    # synthetic posteriors: each window is wrong in its context frames, right elsewhere
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(total, 6, generator=g)
    outs = []
    for s, e, k0, k1 in plan:
        out = truth[s:e].clone()
        out[: k0 - s] = -99.0
        out[k1 - s:] = 99.0
        outs.append(out)
    assert torch.equal(stitch(plan, outs), truth)


def test_window_plan_rejects_no_centre():
    with pytest.raises(ConfigError, match="nothing to keep"):
        window_plan(100, 10, 5)


def test_windowed_slices_samples_exactly(teachers):
    """With a time-local stand-in for the model, windowed output equals the whole-input one."""
    model = teachers["layer"]
    asr = Transcriber(model, CharTokenizer(), window_s=0.4, overlap_s=0.05)

    def local_logits(inputs, attention_mask=None):
        feats = model.wav2vec2.feature_extractor(inputs)  # (1, 32, T): local in time
        return feats[:, :29].transpose(1, 2)

    asr._logits = local_logits
    wav = _wav(2.3, seed=5)
    windowed = asr.log_probs(wav, mode="windowed")
    plain = asr.log_probs(wav, mode="plain")
    assert len(window_plan(plain.shape[0], asr.window_frames, asr.context_frames)) > 3
    assert torch.allclose(windowed, plain, atol=1e-5)


# ----------------------------------------------------------------------- words and formats
def test_align_words_on_synthetic_posteriors():
    tok = CharTokenizer()
    a, b, c = (tok.encode(ch)[0] for ch in "ABC")
    path = [0, a, a, 0, 1, 1, b, 0, b, 0, 1, c, c, c, 0]  # "A", "BB", "C"
    probs = torch.full((len(path), len(tok)), 0.01)
    probs[torch.arange(len(path)), torch.tensor(path)] = 0.8
    text, words = align_words(probs.log(), tok, frame_shift=0.02, duration=0.29)
    assert text == "A BB C"
    assert [w.word for w in words] == ["A", "BB", "C"]
    assert [(w.start, w.end) for w in words] == [(0.02, 0.06), (0.12, 0.18), (0.22, 0.28)]
    assert all(abs(w.confidence - 0.8) < 1e-6 for w in words)


def test_timestamps_monotone_and_within_duration(student):
    asr = Transcriber(student, CharTokenizer())
    wav = _wav(2.5, seed=7)
    result = asr.transcribe_waveform(wav)
    assert result.words, "a random model should emit some words"
    assert result.text == " ".join(w.word for w in result.words)
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    for w, nxt in zip(result.words, result.words[1:]):
        assert w.end <= nxt.start
    for w in result.words:
        assert 0 <= w.start < w.end <= result.duration
        assert 0 < w.confidence <= 1


def test_json_and_srt_formats():
    words = [Word("HELLO", 0.0, 0.4, 0.9), Word("THERE", 0.5, 0.9, 0.8),
             Word("GENERAL", 3.0, 3.5, 0.7), Word("KENOBI", 3.6, 4.25, 0.6)]
    t = Transcript("HELLO THERE GENERAL KENOBI", words, duration=4.5, sample_rate=44100,
                   channels=2, path="x.wav", mode="one-pass")
    doc = json.loads(t.format("json"))
    assert doc["text"] == t.text and doc["sample_rate"] == 44100 and doc["channels"] == 2
    assert doc["words"][3] == {"word": "KENOBI", "start": 3.6, "end": 4.25, "confidence": 0.6}
    srt = t.format("srt")
    cues = srt.strip().split("\n\n")
    assert len(cues) == 2
    stamp = r"(\d\d):(\d\d):(\d\d),(\d{3})"
    pattern = re.compile(rf"^(\d+)\n{stamp} --> {stamp}\n.+$")
    last_end = -1
    for i, cue in enumerate(cues, start=1):
        m = pattern.match(cue)
        assert m and int(m.group(1)) == i
        h, mi, s, ms, h2, mi2, s2, ms2 = (int(x) for x in m.groups()[1:])
        start = h * 3600 + mi * 60 + s + ms / 1000
        end = h2 * 3600 + mi2 * 60 + s2 + ms2 / 1000
        assert last_end <= start < end
        last_end = end
    assert "00:00:04,250" in srt
    assert t.format("txt") == "HELLO THERE GENERAL KENOBI\n"
    assert Transcript("").format("srt") == ""


# ----------------------------------------------------------------------- files
def test_multichannel_44k_file_is_resampled_and_reported(tmp_path, folders):
    asr = Transcriber.from_pretrained(folders["student"])
    g = np.random.default_rng(0)
    stereo = (0.2 * g.standard_normal((int(1.5 * 44100), 2))).astype("float32")
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, 44100)
    result = asr.transcribe_file(path)
    assert (result.sample_rate, result.channels, result.path) == (44100, 2, str(path))
    assert abs(result.duration - 1.5) < 1e-3
    wav, info = load_audio(path)
    assert wav.shape == (24000,) and info["sample_rate"] == 44100
    decoded, _ = sf.read(path, dtype="float32")  # the 16-bit samples the file holds
    from_memory = asr.transcribe_waveform(torch.from_numpy(decoded.T.copy()), sample_rate=44100)
    assert from_memory.text == result.text and from_memory.channels == 2


def test_transcribe_batch_matches_single_items(folders):
    for name in ("teacher", "student"):
        asr = Transcriber.from_pretrained(folders[name])
        waves = [_wav(s, seed=i) for i, s in enumerate((0.7, 1.3, 0.4))]
        batch = asr.transcribe_batch(waves, batch_size=3)
        for wav, res in zip(waves, batch):
            single = asr.transcribe_waveform(wav)
            assert res.text == single.text
            assert [w.word for w in res.words] == [w.word for w in single.words]


def test_from_pretrained_errors(tmp_path, folders):
    (tmp_path / "no_tok").mkdir()
    tiny_teacher(head="ctc", vocab_size=29).save_pretrained(tmp_path / "no_tok")
    with pytest.raises(DataError, match="tokenizer.json"):
        Transcriber.from_pretrained(tmp_path / "no_tok")
    cls_dir = package_model(tiny_teacher(head="classification"), tmp_path / "cls")
    with pytest.raises(ConfigError, match="classification"):
        Transcriber.from_pretrained(cls_dir)
    with pytest.raises(DataError, match="no such model folder"):
        Transcriber.from_pretrained(tmp_path / "missing")


def _bad_inputs(root):
    """Good, silent and five kinds of bad files."""
    good = root / "good.wav"
    sf.write(good, _wav(0.8, seed=9).numpy(), SR)
    silent = root / "silent.wav"
    sf.write(silent, np.zeros(SR, dtype="float32"), SR)
    empty = root / "empty.wav"
    empty.write_bytes(b"")
    folder = root / "folder.wav"
    folder.mkdir()
    flac = root / "cut.flac"
    sf.write(flac, _wav(1.0).numpy(), SR)
    flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    cut_wav = root / "cut.wav"
    sf.write(cut_wav, _wav(1.0).numpy(), SR, subtype="PCM_16")
    cut_wav.write_bytes(cut_wav.read_bytes()[:20000])
    text = root / "notes.mp3"
    text.write_text("this is not audio\n" * 20)
    bad = [empty, folder, flac, cut_wav, text]
    return good, silent, bad


def test_bad_inputs_raise_clear_errors(tmp_path, folders):
    asr = Transcriber.from_pretrained(folders["student"])
    good, silent, bad = _bad_inputs(tmp_path)
    assert asr.transcribe_file(silent).text == ""
    assert asr.transcribe_file(silent).mode == "silent"
    for path in bad:
        with pytest.raises(AudioError) as info:
            asr.transcribe_file(path)
        assert str(path) in str(info.value) and "fix:" in str(info.value)
    results = asr.transcribe_batch([good, *bad, silent], errors="return")
    assert [isinstance(r, AudioError) for r in results] == [False] + [True] * 5 + [False]
    assert results[-1].text == ""


def test_cli_goes_on_after_bad_files_and_counts_them(tmp_path, folders, capsys):
    good, silent, bad = _bad_inputs(tmp_path)
    out = tmp_path / "out"
    files = [str(p) for p in (good, *bad, silent)]
    code = main([*files, "--model", folders["student"], "--format", "json",
                 "--output-dir", str(out), "--no-progress"])
    assert code == 1            # some files failed (cald_speech.cli)
    err = capsys.readouterr().err
    for path in bad:
        assert str(path) in err
    assert "5 of 7 file(s) failed" in err
    doc = json.loads((out / "good.json").read_text())
    assert doc["path"] == str(good) and doc["sample_rate"] == SR
    assert json.loads((out / "silent.json").read_text())["text"] == ""
    # stdout, srt, one file; exit 0
    assert main([str(good), "--model", folders["student"], "--format", "srt"]) == 0
    # a model folder that cannot be loaded fails every file
    assert main([str(good), str(silent), "--model", str(tmp_path / "nope")]) == 1


# ---------------------------------------------------------------- intent models
@pytest.fixture(scope="module")
def intent_folder(tmp_path_factory, student):
    from cald_speech.tasks.intent.labels import LabelMaps
    from cald_speech.tasks.intent.model import IntentModel

    labels = LabelMaps({"alarm_set": ("alarm", "set"), "play_music": ("play", "music"),
                        "alarm_query": ("alarm", "query")})
    torch.manual_seed(0)
    model = IntentModel.new(convert(tiny_teacher()), labels).eval()
    folder = tmp_path_factory.mktemp("intent") / "model"
    model.save_pretrained(folder)
    return folder, model


def test_classify_file_matches_the_model_on_the_resampled_mono_waveform(tmp_path, intent_folder):
    from cald_speech.inference import Classifier

    folder, model = intent_folder
    stereo = np.stack([_wav(1.3, 1).numpy(), _wav(1.3, 2).numpy()], axis=1)
    path = tmp_path / "a.wav"
    sf.write(path, stereo, 16000)
    out = Classifier.from_pretrained(folder).classify_file(path)
    with torch.no_grad():  # the model on the one unpadded mono waveform
        ref = model.predict(model(torch.from_numpy(stereo.mean(axis=1)).float()[None]).logits)[0]
    assert {k: out[k] for k in ("intent", "scenario", "action")} == ref
    assert (out["sample_rate"], out["channels"]) == (16000, 2)
    assert set(out["confidence"]) == {"scenario", "action"}
    assert all(0 < p <= 1 for p in out["confidence"].values())


def test_classify_batch_equals_singles_and_skips_bad_files(tmp_path, intent_folder):
    from cald_speech.inference import Classifier

    clf = Classifier.from_pretrained(intent_folder[0])
    paths = []
    for i, sec in enumerate((0.7, 1.9, 1.1)):
        paths.append(tmp_path / f"{i}.flac")
        sf.write(paths[-1], _wav(sec, 10 + i).numpy(), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not audio")
    batch = clf.classify_batch([paths[0], bad, paths[1], paths[2]], batch_size=2,
                               errors="skip")
    assert "error" in batch[1] and str(bad) in batch[1]["error"]
    for got, path in zip([batch[0], batch[2], batch[3]], paths):
        single = clf.classify_file(path)
        assert got["intent"] == single["intent"]
        for task, p in single["confidence"].items():
            assert got["confidence"][task] == pytest.approx(p, abs=1e-5)
    with pytest.raises(AudioError):
        clf.classify_batch([bad])


def test_intent_and_ctc_folders_are_told_apart(intent_folder, folders):
    from cald_speech.inference import Classifier

    with pytest.raises(ConfigError, match="intent model; use Classifier"):
        Transcriber.from_pretrained(intent_folder[0])
    with pytest.raises(ConfigError, match="use Transcriber"):
        Classifier.from_pretrained(folders["student"])


def test_cli_passes_the_one_pass_options(tmp_path, folders, monkeypatch):
    good, _, _ = _bad_inputs(tmp_path)
    seen = {}
    load = Transcriber.from_pretrained.__func__

    def spy(cls, folder, **kwargs):
        seen.update(kwargs)
        return load(cls, folder, **kwargs)

    monkeypatch.setattr(Transcriber, "from_pretrained", classmethod(spy))
    assert main([str(good), "--model", folders["student"], "--norm-window-s", "0",
                 "--projection-cache-mb", "0", "--no-progress"]) == 0
    assert seen["norm_window_s"] == 0 and seen["projection_cache_mb"] == 0


def test_cli_classifies_with_an_intent_folder(tmp_path, intent_folder, capsys):
    good = tmp_path / "g.wav"
    sf.write(good, _wav(1.0, 3).numpy(), 22050)
    missing = tmp_path / "missing.wav"
    rc = main([str(good), str(missing), "--model", str(intent_folder[0]), "--format", "json"])
    out, err = capsys.readouterr()
    assert rc == 1 and "missing.wav" in err
    rec = json.loads(out.strip())
    assert rec["path"] == str(good) and rec["sample_rate"] == 22050
    assert rec["intent"] == f"{rec['scenario']}_{rec['action']}"
    assert rec["scenario"] in {"alarm", "play"} and rec["action"] in {"set", "music", "query"}
    assert main([str(good), "--model", str(intent_folder[0]), "--format", "srt"]) == 2


def test_length_bounded_students_get_windows_past_their_limit(teachers):
    tok = CharTokenizer()
    lin = convert(teachers["group"], mixer="linformer", k=16, max_len=600).eval()  # 0.75 s
    asr = Transcriber(lin, tok, window_s=0.5, overlap_s=0.05)
    assert (asr.linear, asr.max_frames) == (True, 600)
    assert asr.default_mode(SR // 2) == "one-pass" and asr.default_mode(SR * 2) == "windowed"
    wav = _wav(2.0, seed=4)
    auto = asr.log_probs(wav)
    assert auto.shape == (int(frame_lengths(lin, wav.numel())), 29)
    assert torch.equal(auto, asr.log_probs(wav, mode="windowed"))
    for mode in ("one-pass", "plain"):
        with pytest.raises(ConfigError, match=r"at most 600 frames \(0\.8 s.*--window-s at most"):
            asr.log_probs(wav, mode=mode)
    wide = Transcriber(lin, tok, window_s=1.0, overlap_s=0.05)
    with pytest.raises(ConfigError, match="windowed mode would give them 799 frames"):
        wide.log_probs(wav, mode="windowed")
    # softmax attention kept (or put back as a "mixer") is not linear-time
    assert Transcriber(convert(teachers["group"], mixer="attention"), tok).linear is False
