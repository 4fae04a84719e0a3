"""The CTC recipe started from a hub checkpoint: its vocabulary and head are kept, no flag."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from cald_speech.data.hub_tokenizer import HubCTCTokenizer
from cald_speech.errors import ConfigError, DataError
from cald_speech.inference import Transcriber
from cald_speech.tasks.asr.model import load_ctc_model
from cald_speech.testing import hub_ctc_folder, tiny_teacher
from tests.integration.test_asr_recipe import run, write_split

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
             num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, mask_time_prob=0.0)


class Records(logging.Handler):
    """The package's log records (SpeechBrain's logging setup replaces the root's
    handlers, pytest's caplog among them)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    @property
    def text(self):
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def logged():
    handler = Records()
    logger = logging.getLogger("cald_speech")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("libri-hub") / "LibriSpeech"
    write_split(root, "train-clean-100", 1, 4)
    write_split(root, "dev-clean", 2, 2)
    write_split(root, "test-clean", 3, 2)
    return root


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """wav2vec2-large-lv60 style: layer-norm CNN with bias, do_normalize."""
    return hub_ctc_folder(tmp_path_factory.mktemp("hub") / "w2v2-960h", "wav2vec2-base",
                          do_normalize=True, feat_extract_norm="layer", conv_bias=True,
                          **SMALL)


def test_loading_keeps_the_checkpoints_head(hub):
    model = load_ctc_model(str(hub), vocab_size=32)
    saved = load_file(str(hub / "model.safetensors"))
    assert torch.equal(model.lm_head.weight, saved["lm_head.weight"])


def test_cald_run_with_a_hub_teacher_keeps_its_vocabulary(hub, corpus, tmp_path, logged):
    out = tmp_path / "cald"
    run("cald.yaml", out, corpus, "--mode", "target", "--teacher_source", str(hub))
    assert "new CTC head" not in logged.text
    info = json.loads((out / "model" / "cald_info.json").read_text())
    assert info["new_head"] is None and str(hub) in info["tokenizer"]
    assert (out / "model" / "vocab.json").is_file()
    assert not (out / "model" / "tokenizer.json").exists()
    pre = json.loads((out / "model" / "preprocessor_config.json").read_text())
    assert pre["do_normalize"] is True
    asr = Transcriber.from_pretrained(out / "model")
    assert isinstance(asr.tokenizer, HubCTCTokenizer)
    assert asr.tokenizer == HubCTCTokenizer.load(hub)
    assert asr.model.lm_head.out_features == 32


def test_finetuning_a_hub_checkpoint_keeps_its_head(hub, corpus, tmp_path, logged):
    out = tmp_path / "ft"
    run("finetune.yaml", out, corpus, "--model_source", str(hub), "--waypoint_every",
        "null")
    assert "new CTC head" not in logged.text
    assert json.loads((out / "model" / "cald_info.json").read_text())["new_head"] is None
    assert Transcriber.from_pretrained(out / "model").tokenizer == HubCTCTokenizer.load(hub)


def test_a_conflicting_tokenizer_stops_before_anything_is_built(hub, corpus, tmp_path):
    out = tmp_path / "conflict"
    with pytest.raises(ConfigError, match=r"CharTokenizer with 29 units.*"
                                          r"HubCTCTokenizer with 32 units"):
        run("cald.yaml", out, corpus, "--mode", "target", "--teacher_source", str(hub),
            "--tokenizer", "!new:cald_speech.data.tokenizer.CharTokenizer")
    assert not (out / "manifests").exists()


def test_a_self_supervised_source_gets_a_new_head_said_and_recorded(corpus, tmp_path, logged):
    src = tmp_path / "ssl"
    tiny_teacher(head="model", **SMALL).save_pretrained(src)
    out = tmp_path / "ft"
    run("finetune.yaml", out, corpus, "--model_source", str(src), "--waypoint_every", "null")
    warned = [r for r in logged.records if r.levelno == logging.WARNING
              and "no tokenizer" in r.getMessage()]
    assert warned and str(src) in warned[0].getMessage()
    info = json.loads((out / "model" / "cald_info.json").read_text())
    assert "new CTC head" in info["new_head"] and "29 units" in info["new_head"]
    assert (out / "model" / "tokenizer.json").is_file()


def test_characters_outside_the_vocabulary_are_counted_once(hub, tmp_path, logged):
    root = tmp_path / "LibriSpeech"
    for split, spk in (("train-clean-100", 1), ("dev-clean", 2), ("test-clean", 3)):
        write_split(root, split, spk, 2)
    trans = next((root / "train-clean-100").rglob("*.trans.txt"))
    lines = trans.read_text().splitlines()
    lines[0] = lines[0].split(" ", 1)[0] + " CAFÉ AU LAIT 42"
    trans.write_text("\n".join(lines) + "\n")
    run("cald.yaml", tmp_path / "run", root, "--mode", "target", "--teacher_source",
        str(hub))
    warned = [r.getMessage() for r in logged.records if "become <unk>" in r.getMessage()]
    assert len(warned) == 1 and "train-clean-100" in warned[0]
    assert "'É' x1" in warned[0] and "'4' x1" in warned[0]


def test_test_split_decoded_with_beam_search_and_an_lm(hub, corpus, tmp_path):
    """The recipe's test evaluation with `beam_size` and `lm`: the per-utterance file holds
    the beam's transcripts, equal to decoding the packaged model's posteriors the same way."""
    from cald_speech.bench.wer import read_items
    from cald_speech.data.audio import load_audio
    from cald_speech.decoding import BeamDecoder
    from cald_speech.lm.build import build_lm

    text = tmp_path / "text.txt"
    text.write_text("A CAT\nTHE DOG RAN\nNO\nYES I DO\nIT'S ME\nGO HOME NOW\n" * 3)
    build_lm([text], tmp_path / "lm.arpa", order=2)
    out = tmp_path / "beam"
    run("cald.yaml", out, corpus, "--mode", "target", "--teacher_source", str(hub),
        "--beam_size", "4", "--lm", str(tmp_path / "lm.arpa"), "--lm_weight", "2.0",
        "--word_bonus", "0.5", "--test_splits", "[test-clean]")
    rows = [json.loads(line) for line in
            (out / "wer_test-clean_utterances.jsonl").read_text().splitlines()]
    asr = Transcriber.from_pretrained(out / "model")
    beam = BeamDecoder(asr.tokenizer, 4, tmp_path / "lm.arpa", 2.0, 0.5)
    items = {it["ID"]: it for it in read_items(out / "manifests" / "test-clean.csv")}
    for row in rows:
        lp = asr.log_probs(load_audio(items[row["ID"]]["wav"])[0])
        assert row["hyp"] == " ".join(beam.decode(lp, asr.frame_shift)[0].split())
    assert any(row["hyp"] for row in rows)


def test_a_bad_lm_stops_the_recipe_before_training(hub, corpus, tmp_path):
    with pytest.raises(DataError, match=r"missing\.arpa: language model file not found"):
        run("cald.yaml", tmp_path / "x", corpus, "--mode", "target", "--teacher_source",
            str(hub), "--beam_size", "4", "--lm", str(tmp_path / "missing.arpa"))
    assert not (tmp_path / "x" / "manifests").exists()  # before anything is built
