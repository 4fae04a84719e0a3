"""The distill recipe (every architecture and time mixing) and the probe recipe end to end."""

import json
from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from cald_speech.bench import layers as bench_layers
from cald_speech.data.audio import load_audio
from cald_speech.data.manifest import read_manifest
from cald_speech.distill.losses import distilhubert_loss
from cald_speech.errors import ConfigError
from cald_speech.gendistiller import LayerStudent, load_upstream, upstream_layers
from cald_speech.tasks.layers.recipe import run_layer_distill
from cald_speech.tasks.probe.recipe import run_probe
from tests.integration.test_asr_recipe import corpus  # noqa: F401

ROOT = Path(__file__).resolve().parents[2] / "recipes" / "LibriSpeech"
MIXER = ROOT.parents[1] / "hparams" / "mixers" / "bimamba2.yaml"
MODES = {
    "distilhubert": ["--mode", "distilhubert"],
    "gendistiller": ["--mode", "gendistiller"],
    "gendistiller_linear": ["--mode", "gendistiller", "--mixer", str(MIXER)],
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
        do_stable_layer_norm=True, mask_time_prob=0.0)).save_pretrained(folder)
    return folder


def common(out, corpus):  # noqa: F811
    return ["--data_folder", str(corpus), "--output_folder", str(out),
            "--feature_cache_folder", str(out.parent / "cache"), "--number_of_epochs", "2",
            "--batch_size", "3", "--device", "cpu", "--warmup_updates", "1",
            "--total_updates", "10", "--log_every", "1"]


def distill(out, corpus, teacher, *extra, layers="[2, 3]"):  # noqa: F811
    argv = [str(ROOT / "distill" / "hparams" / "distill.yaml"), *common(out, corpus),
            "--teacher_source", str(teacher), "--target_layers", layers,
            "--encoder_layers", "1", *extra]
    return run_layer_distill(argv)


@pytest.fixture(scope="module")
def students(tmp_path_factory, corpus, teacher):  # noqa: F811
    root = tmp_path_factory.mktemp("distill")
    return {name: (root / name, distill(root / name, corpus, teacher, *extra))
            for name, extra in MODES.items()}


@pytest.mark.parametrize("name", list(MODES))
def test_distill_modes_report_what_the_packaged_model_does(students, teacher, corpus, name):  # noqa: F811
    out, results = students[name]
    stats = results["test-clean"]
    assert {"L1_layer2", "L1_layer3", "cos_layer2", "cos_layer3"} <= set(stats)
    student = load_upstream(out / "model")
    assert isinstance(student, LayerStudent) and student.target_layers == [2, 3]
    assert student.is_linear_time() == (name == "gendistiller_linear")
    assert student.info["architecture"] == MODES[name][1]
    tbase, sbase = load_upstream(teacher), student.base_model   # the front end never moved
    for part in ("feature_extractor", "feature_projection"):
        t_state = getattr(tbase, part).state_dict()
        assert all(torch.equal(v, t_state[k]) for k, v in getattr(sbase, part).state_dict().items())
    # The reported test numbers are those of the packaged model, generating on its own.
    tmodel = load_upstream(teacher)
    sums, frames = [0.0, 0.0], 0
    for row in read_manifest(out / "manifests" / "test-clean.csv"):
        wav = load_audio(row["wav"])[0][None]
        with torch.no_grad():
            targets, _ = upstream_layers(tmodel, wav, layers=[2, 3])
            _, parts = distilhubert_loss(student(wav).layers, targets)
        n = targets[0].shape[1]
        sums = [s + v * n for s, v in zip(sums, parts["l1"])]
        frames += n
    assert stats["L1_layer2"] == pytest.approx(sums[0] / frames, rel=1e-4)
    assert stats["L1_layer3"] == pytest.approx(sums[1] / frames, rel=1e-4)
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 4 and all(s["task"] > 0 for s in steps)


def test_distill_resumes_where_it_stopped(students, corpus, teacher):  # noqa: F811
    out, _ = students["gendistiller"]
    before = (out / "model" / "head.safetensors").read_bytes()
    again = distill(out, corpus, teacher, *MODES["gendistiller"])  # nothing left to train
    assert (out / "model" / "head.safetensors").read_bytes() == before
    first = students["gendistiller"][1]["test-clean"]["L1"]
    assert again["test-clean"]["L1"] == pytest.approx(first)


@pytest.fixture(scope="module")
def probes(students, corpus, teacher):  # noqa: F811
    root = students["gendistiller"][0].parent
    out = {}
    for upstream in ("teacher", "gendistiller"):
        source = teacher if upstream == "teacher" else students["gendistiller"][0] / "model"
        extra = ["--probe_layers", "[2, 3]"] if upstream == "teacher" else []
        argv = [str(ROOT / "probe" / "hparams" / "probe.yaml"),
                *common(root / f"probe_{upstream}", corpus),
                "--upstream_source", str(source), "--probe_hidden", "8", *extra]
        out[upstream] = (source, root / f"probe_{upstream}", run_probe(argv))
    return out


@pytest.mark.parametrize("upstream", ["teacher", "gendistiller"])
def test_probe_trains_a_ctc_head_on_frozen_layers(probes, upstream):
    source, out, results = probes[upstream]
    assert {"WER", "CER"} <= set(results["test-clean"])
    frozen = load_upstream(source).state_dict()
    saved = load_upstream(out / "model" / "upstream").state_dict()
    assert all(torch.equal(frozen[k], saved[k]) for k in frozen)  # the upstream never moved
    head = torch.load(out / "model" / "probe_head.pt", weights_only=True)
    assert head["layer_weights"].shape == (2,)
    assert (out / "model" / "tokenizer.json").exists()


def test_bench_layers_tabulates_the_runs(probes, students, teacher, capsys):
    root = students["gendistiller"][0].parent
    assert bench_layers.main([str(root), "--split", "test-clean"]) == 0
    rows = {r["upstream"]: r for r in json.loads((root / "layers.json").read_text())["rows"]}
    assert set(rows) == {teacher.name, *MODES}
    gd = rows["gendistiller"]
    stats = students["gendistiller"][1]["test-clean"]
    assert gd["L1"] == pytest.approx(stats["L1"]) and gd["cos"] == pytest.approx(stats["cos"])
    assert gd["CER"] == pytest.approx(probes["gendistiller"][2]["test-clean"]["CER"])
    assert rows[teacher.name]["WER"] == pytest.approx(probes["teacher"][2]["test-clean"]["WER"])
    assert "CER" not in rows["distilhubert"] or rows["distilhubert"]["CER"] is None
    student = load_upstream(students["gendistiller"][0] / "model")
    assert gd["params_M"] == pytest.approx(sum(p.numel() for p in student.parameters()) / 1e6)
    assert gd["params_beyond_cnn_M"] < gd["params_M"]
    assert "probe CER" in capsys.readouterr().out


def test_bad_settings_fail_before_training(tmp_path, corpus, teacher):  # noqa: F811
    with pytest.raises(ConfigError, match="mode 'big'"):
        distill(tmp_path / "a", corpus, teacher, "--mode", "big")
    with pytest.raises(ConfigError, match=r"target_layers \[2, 3, 9\]"):
        distill(tmp_path / "b", corpus, teacher, layers="[2, 3, 9]")
