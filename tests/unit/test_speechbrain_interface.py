"""Packaged models load with SpeechBrain's own interfaces and give cald-transcribe's results.

``EncoderASR.from_hparams`` for CTC folders (teacher and student), ``foreign_class`` for
intent folders; from the folder where it was packaged and from a copy elsewhere; nothing
touches the network.
"""

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.inference.ASR import EncoderASR
from speechbrain.inference.interfaces import foreign_class

from cald_speech.data.tokenizer import CharTokenizer
from cald_speech.features import frame_lengths
from cald_speech.inference import Classifier, Transcriber
from cald_speech.inference.speechbrain_interface import CaldIntentClassifier, CTCEncoder
from cald_speech.student import convert, package_model
from cald_speech.student.speechbrain_files import (
    HPARAMS_FILE,
    INTENT_HEAD,
    INTENT_WEIGHTS,
    model_files,
    write_speechbrain_files,
)
from cald_speech.tasks.intent.labels import LabelMaps
from cald_speech.tasks.intent.model import HEAD_CONFIG, HEAD_WEIGHTS, IntentModel
from cald_speech.testing import tiny_teacher


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: HF offline, and SpeechBrain's downloaders fail loudly if called."""
    import huggingface_hub.constants
    import speechbrain.utils.fetching as fetching

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args} {kwargs}")

    monkeypatch.setattr(fetching, "download_file", refuse)
    monkeypatch.setattr(fetching, "download_file_hf", refuse)


def _wav(path, seconds, seed, rate=16000, channels=1):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * (220 + 80 * seed) * t)
    audio = (tone + 0.05 * rng.standard_normal(t.size)).astype("float32")
    if channels > 1:
        audio = np.stack([audio, 0.5 * audio], axis=1)
    sf.write(str(path), audio, rate)
    return str(path)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    return [_wav(d / "a.wav", 1.5, 0), _wav(d / "b.wav", 0.9, 1),
            _wav(d / "c.wav", 1.2, 2, rate=22050, channels=2)]


def _ctc_folder(tmp_path, student):
    model = tiny_teacher(head="ctc", vocab_size=29)
    if student:
        model = convert(model)
    return package_model(model, tmp_path / "model", CharTokenizer(), info={"run": 1})


def _padded(paths):
    """A SpeechBrain batch: zero-padded 16 kHz waveforms and relative lengths."""
    sigs = [torch.from_numpy(sf.read(p, dtype="float32")[0]) for p in paths]
    longest = max(s.numel() for s in sigs)
    batch = torch.zeros(len(sigs), longest)
    for i, s in enumerate(sigs):
        batch[i, :s.numel()] = s
    return batch, torch.tensor([s.numel() / longest for s in sigs])


@pytest.mark.parametrize("student", [False, True], ids=["teacher", "student"])
def test_encoder_asr_transcribes_as_cald_transcribe(tmp_path, wavs, student):
    folder = _ctc_folder(tmp_path, student)
    savedir = tmp_path / "savedir"
    asr = EncoderASR.from_hparams(source=folder, savedir=str(savedir))
    ref = Transcriber.from_pretrained(folder)
    expected = [ref.transcribe_file(w, timestamps=False).text for w in wavs]
    assert all(expected), "a random tiny model should still emit text; the test means nothing"
    assert [asr.transcribe_file(w) for w in wavs] == expected
    # a padded batch of two lengths, relative lengths, as SpeechBrain batches come
    batch, lens = _padded(wavs[:2])
    words, tokens = asr.transcribe_batch(batch, lens)
    assert words == expected[:2]
    assert words == [t.text for t in ref.transcribe_batch(wavs[:2], timestamps=False)]
    assert all(isinstance(t, list) for t in tokens)
    # savedir mirrors the folder (own names, links), and the audio was not copied into it
    assert (savedir / "model.safetensors").is_symlink()
    assert (savedir / "config.json").is_file() and (savedir / "tokenizer.json").is_file()
    assert not list(savedir.glob("*.wav"))


def test_encoder_output_is_log_probs_with_blank_padding(tmp_path):
    folder = _ctc_folder(tmp_path, student=True)
    asr = EncoderASR.from_hparams(source=folder, savedir=str(tmp_path / "s"))
    torch.manual_seed(0)
    batch = 0.1 * torch.randn(2, 8000)
    batch[1, 5000:] = 0
    out = asr.encode_batch(batch, torch.tensor([1.0, 0.625]))
    ref = Transcriber.from_pretrained(folder)
    short = ref.log_probs(batch[1, :5000], mode="plain")
    assert torch.allclose(out.exp().sum(-1), torch.ones(out.shape[:2]), atol=1e-4)
    assert torch.allclose(out[1, :short.shape[0]], short, atol=1e-4)
    assert (out[1, short.shape[0]:].argmax(-1) == 0).all()   # padding: blank
    silent = asr.encode_batch(torch.zeros(1, 8000), torch.ones(1))
    assert asr.transcribe_batch(torch.zeros(1, 8000), torch.ones(1))[0] == [""]
    assert (silent.argmax(-1) == 0).all()


def test_rounded_relative_lengths_never_cut_a_frame(tmp_path):
    """SpeechBrain's decoders keep round(wav_lens * T) frames: never fewer than are real."""
    folder = _ctc_folder(tmp_path, student=False)
    enc = CTCEncoder()
    enc.load(f"{folder}/model.safetensors")
    torch.manual_seed(0)
    extended = 0
    for longest in range(2000, 2100, 3):       # the tiny CNN: 40-sample field, stride 20
        frames_long = int(frame_lengths(enc.model, longest))
        for n in range(longest - 60, longest, 7):
            lens = torch.tensor([1.0, n / longest])
            batch = 0.1 * torch.randn(2, longest)
            out = enc(batch, lens)
            frames = int(frame_lengths(enc.model, n))
            assert int(torch.round(lens[1] * out.shape[1])) >= frames
            assert torch.allclose(out[1, :frames], enc.transcriber.log_probs(
                batch[1, :n], mode="plain"), atol=1e-4)
            extended += out.shape[1] > frames_long
    assert extended, "no case needed the extra blank frame; the test checks nothing"


def test_relocated_folder_loads(tmp_path, wavs):
    folder = _ctc_folder(tmp_path, student=True)
    expected = Transcriber.from_pretrained(folder).transcribe_file(wavs[0], timestamps=False).text
    text = (tmp_path / "model" / HPARAMS_FILE).read_text()
    assert str(tmp_path) not in text          # nothing absolute in the YAML
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(folder, moved)
    shutil.rmtree(folder)                      # the original is gone
    asr = EncoderASR.from_hparams(source=str(moved), savedir=str(tmp_path / "s2"))
    assert asr.transcribe_file(wavs[0]) == expected
    # savedir=None: the folder's files are read where they are
    assert EncoderASR.from_hparams(source=str(moved)).transcribe_file(wavs[0]) == expected


def test_hub_vocabulary_teacher(tmp_path, wavs):
    hub_tokenizer = pytest.importorskip("cald_speech.data.hub_tokenizer")
    vocab = tmp_path / "vocab"
    hub_tokenizer.write_hub_vocabulary(vocab)
    tok = hub_tokenizer.HubCTCTokenizer.load(vocab)
    folder = package_model(tiny_teacher(head="ctc", vocab_size=len(tok)), tmp_path / "m", tok)
    if not (tmp_path / "m" / HPARAMS_FILE).is_file():
        pytest.skip("this folder has no tokenizer file the SpeechBrain YAML can point at")
    expected = Transcriber.from_pretrained(folder).transcribe_file(wavs[0], timestamps=False).text
    asr = EncoderASR.from_hparams(source=folder, savedir=str(tmp_path / "s"))
    assert asr.transcribe_file(wavs[0]) == expected


def test_intent_model_with_foreign_class(tmp_path, wavs):
    labels = LabelMaps({"alarm_set": ("alarm", "set"), "play_music": ("play", "music"),
                        "weather_query": ("weather", "query")})
    folder = package_model(IntentModel.new(convert(tiny_teacher()), labels), tmp_path / "slu")
    assert (tmp_path / "slu" / "custom.py").is_file()
    slu = foreign_class(source=folder, pymodule_file="custom.py",
                        classname="CaldIntentClassifier", savedir=str(tmp_path / "s"))
    assert isinstance(slu, CaldIntentClassifier)
    ref = Classifier.from_pretrained(folder)
    keys = ("intent", "scenario", "action")
    for w in wavs:
        got, want = slu.classify_file(w), ref.classify_file(w)
        assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    batch, lens = _padded(wavs[:2])
    got = slu.classify_batch(batch, lens)
    want = ref.classify_batch(wavs[:2])
    assert [{k: g[k] for k in keys} for g in got] == [{k: w[k] for k in keys} for w in want]
    for g, w in zip(got, want):
        assert g["confidence"] == pytest.approx(w["confidence"], abs=1e-4)
    assert [g["intent"] for g in slu.classify_files(wavs)] == [
        w["intent"] for w in ref.classify_batch(wavs)]
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    again = CaldIntentClassifier.from_hparams(source=str(moved), savedir=str(tmp_path / "s3"))
    assert again.classify_file(wavs[0])["intent"] == ref.classify_file(wavs[0])["intent"]


def test_only_ctc_and_intent_folders_get_the_files(tmp_path):
    encoder = package_model(convert(tiny_teacher()), tmp_path / "enc")
    assert not (tmp_path / "enc" / HPARAMS_FILE).exists()
    no_tokenizer = package_model(tiny_teacher(head="ctc", vocab_size=29), tmp_path / "ctc")
    assert write_speechbrain_files(no_tokenizer) == []
    assert write_speechbrain_files(encoder) == []
    # a folder re-packaged without a head loses the files of its earlier packaging
    package_model(tiny_teacher(head="ctc", vocab_size=29), tmp_path / "re", CharTokenizer())
    assert (tmp_path / "re" / HPARAMS_FILE).is_file()
    package_model(tiny_teacher(), tmp_path / "re")
    assert not (tmp_path / "re" / HPARAMS_FILE).exists()


def test_intent_names_match_the_intent_model():
    assert (INTENT_HEAD, INTENT_WEIGHTS) == (HEAD_CONFIG, HEAD_WEIGHTS)


def test_model_files_leave_out_other_content(tmp_path):
    folder = _ctc_folder(tmp_path, student=False)
    (tmp_path / "model" / "save").mkdir()
    (tmp_path / "model" / "save" / "model.ckpt").write_text("x")
    (tmp_path / "model" / "train_log.txt").write_text("x")
    files = model_files(folder)
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not any(f.startswith("save/") or f.endswith(".txt") for f in files)
