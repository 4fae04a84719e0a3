"""The LibriSpeech CTC recipe end to end on a tiny hand-made corpus, in every mode."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cald_speech.errors import ConfigError
from cald_speech.tasks.asr.recipe import run_asr

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "LibriSpeech" / "ASR"
TINY = """
hidden_size: 32
num_hidden_layers: 2
num_attention_heads: 2
intermediate_size: 64
conv_dim: [16, 16]
conv_stride: [5, 4]
conv_kernel: [10, 4]
num_conv_pos_embeddings: 8
num_conv_pos_embedding_groups: 2
feat_extract_norm: layer
do_stable_layer_norm: true
mask_time_prob: 0.0
"""
TEXTS = ["A CAT", "THE DOG RAN", "NO", "YES I DO", "IT'S ME", "GO HOME NOW"]


def write_split(root, split, spk, n):
    rng = np.random.default_rng(spk)
    chap = root / split / str(spk) / "10"
    chap.mkdir(parents=True)
    lines = []
    for i in range(n):
        uid = f"{spk}-10-{i:04d}"
        sf.write(chap / f"{uid}.flac",
                 (0.1 * rng.standard_normal(2400 + 400 * i)).astype("float32"), 16000)
        lines.append(f"{uid} {TEXTS[i % len(TEXTS)]}")
    (chap / f"{spk}-10.trans.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("libri") / "LibriSpeech"
    write_split(root, "train-clean-100", 1, 6)
    write_split(root, "dev-clean", 2, 2)
    write_split(root, "test-clean", 3, 2)
    return root


def run(hparams, out, corpus, *extra):
    argv = [
        str(hparams if os.path.isabs(hparams) else RECIPE / "hparams" / hparams),
        "--data_folder", str(corpus),
        "--output_folder", str(out), "--feature_cache_folder", str(out.parent / "cache"),
        "--number_of_epochs", "1", "--batch_size", "3", "--device", "cpu",
        "--warmup_updates", "1", "--total_updates", "10", "--log_every", "1", *extra,
    ]
    return run_asr(argv)


@pytest.fixture(scope="module", params=["wav2vec2", "hubert", "wavlm"])
def teacher(request, tmp_path_factory, corpus):
    """A fine-tuned tiny teacher of each model family (and its waypoints)."""
    out = tmp_path_factory.mktemp(f"runs-{request.param}") / "finetune"
    cfg = out.parent / "tiny.yaml"
    cfg.write_text(TINY)
    results = run("finetune.yaml", out, corpus, "--model_config", str(cfg), "--waypoint_every", "1",
                  "--model_family", request.param)
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == request.param
    return out, results


def test_finetune_writes_model_waypoints_and_wer(teacher):
    out, results = teacher
    assert set(results) == {"test-clean"} and 0 <= results["test-clean"]["WER"]
    assert (out / "model" / "config.json").exists()
    assert (out / "model" / "tokenizer.json").exists()
    assert sorted(os.listdir(out / "waypoints")) == ["step-0", "step-1", "step-2"]
    assert (out / "wer_test-clean.txt").exists()
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and "task" in steps[0]


@pytest.mark.parametrize("mode", ["unguided", "target", "hybrid", "trajectory", "waypoint"])
def test_cald_modes_run_end_to_end(teacher, corpus, tmp_path, mode):
    t_out, _ = teacher
    extra = ["--mode", mode, "--switch_step", "1"]
    if mode in ("unguided", "target", "hybrid"):
        extra += ["--teacher_source", str(t_out / "model")]
    else:
        extra += ["--pretrained_source", str(t_out / "waypoints" / "step-1")]
    if mode == "waypoint":
        extra += ["--waypoint_dir", str(t_out / "waypoints")]
    results = run("cald.yaml", tmp_path / mode, corpus, *extra)
    assert 0 <= results["test-clean"]["WER"]
    cfg = json.loads((tmp_path / mode / "model" / "config.json").read_text())
    assert cfg["cald"]["mixers"][0]["name"] == "bimamba2"
    steps = [json.loads(x) for x in (tmp_path / mode / "steps.jsonl").read_text().splitlines()]
    has_layer = [("layer" in s) for s in steps]
    expected = {
        "unguided": [False, False], "target": [True, True], "hybrid": [True, False],
        "trajectory": [True, True], "waypoint": [True, True],
    }[mode]
    assert has_layer == expected


def test_same_seed_same_run_with_spec_augment(corpus, tmp_path):
    # SpecAugment masks come from NumPy's generator: the recipe must seed it too.
    cfg = tmp_path / "masked.yaml"
    cfg.write_text(TINY.replace("mask_time_prob: 0.0", "mask_time_prob: 0.5\nmask_time_length: 2"))

    def losses(name, seed):
        out = tmp_path / name
        run("finetune.yaml", out, corpus, "--model_config", str(cfg), "--seed", str(seed),
            "--waypoint_every", "null")
        return [json.loads(x)["task"] for x in (out / "steps.jsonl").read_text().splitlines()]

    first = losses("a", 5)
    np.random.seed(12345)  # whatever state the process is in, the recipe reseeds
    assert losses("b", 5) == first
    assert losses("c", 6) != first


def test_bad_hparams_fail_early(corpus, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'alpha_layer'"):
        run("cald.yaml", tmp_path / "x", corpus, "--alpha_layr", "3")
    typo = tmp_path / "typo.yaml"
    text = (RECIPE / "hparams" / "cald.yaml").read_text()
    text = text.replace("!include:../../../../hparams", f"!include:{RECIPE.parents[2]}/hparams")
    typo.write_text(text.replace("kd_temperature:", "kd_temprature:"))
    with pytest.raises(ConfigError, match="did you mean 'kd_temperature'"):
        run(str(typo), tmp_path / "x2", corpus)
    with pytest.raises(ConfigError, match="best_metric 'BLEU'"):
        run("cald.yaml", tmp_path / "w", corpus, "--best_metric", "BLEU")
    with pytest.raises(ConfigError, match="unknown guidance mode|unknown mode"):
        run("cald.yaml", tmp_path / "y", corpus, "--mode", "targett")
    with pytest.raises(Exception, match="model folder not found|not found"):
        run("cald.yaml", tmp_path / "z", corpus, "--mode", "target",
            "--teacher_source", str(tmp_path / "missing"))


def test_ctc_on_a_slurp_layout_corpus(tmp_path):
    """The offline 'pretrained' start: CTC from scratch on a SLURP-format corpus."""
    from tests.integration.test_intent_recipe import write_corpus

    root = write_corpus(tmp_path / "slurp")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "pre"
    results = run(
        "finetune.yaml", out, root, "--model_config", str(cfg), "--data_format", "slurp",
        "--train_splits", "[train]", "--valid_splits", "[devel]", "--test_splits", "[test]",
        "--text_column", "transcript", "--normalize_text", "true", "--waypoint_every", "null",
    )
    assert set(results) == {"test"}
    refs = (out / "wer_test.txt").read_text()
    # normalised transcript ("cooking recipe 22") as the reference words
    assert re.search(r"COOKING\s*;\s*RECIPE\s*;\s*TWENTY\s*;\s*TWO", refs)


def test_console_scripts_on_each_family(teacher, tmp_path, capsys):
    """cald-convert, cald-transcribe and cald-bench wer on the fine-tuned teacher."""
    from cald_speech import inference
    from cald_speech.bench import cli
    from cald_speech.student.cli import main as convert_main

    t_out, results = teacher
    family = json.loads((t_out / "model" / "config.json").read_text())["model_type"]
    student = tmp_path / "student"
    assert convert_main([str(t_out / "model"), str(student)]) == 0
    cfg = json.loads((student / "config.json").read_text())
    assert cfg["model_type"] == family and cfg["cald"]["mixers"][0]["name"] == "bimamba2"

    csv = sorted(t_out.rglob("test-clean.csv"))[0]
    bench = tmp_path / "bench"
    assert cli.main(["wer", "--teacher", str(t_out / "model"), "--student", str(student),
                     "--csv", str(csv), "--out-dir", str(bench), "--device", "cpu"]) == 0
    summary = json.loads((bench / "wer.json").read_text())
    assert summary["items"] == 2 and not summary["failed"]
    # the same teacher, the same greedy decoding, the same references as the recipe's test
    assert summary["teacher"]["wer"] == pytest.approx(results["test-clean"]["WER"] / 100)
    utts = {u["ID"]: u for u in json.loads((bench / "wer_utterances.json").read_text())}

    wavs = sorted(str(p) for p in t_out.parents[1].rglob("3-10-*.flac"))
    assert len(wavs) == 2
    for model, key in ((t_out / "model", "teacher"), (student, "student")):
        outdir = tmp_path / f"txt-{key}"
        assert inference.main(["--model", str(model), "--output-dir", str(outdir),
                               "--no-progress", "--device", "cpu", *wavs]) == 0
        for w in wavs:
            uid = Path(w).stem
            assert (outdir / f"{uid}.txt").read_text().strip() == utts[uid][key]


def test_students_start_from_the_head_the_teacher_trajectory_started_from(teacher, tmp_path):
    """From a self-supervised folder (no CTC head) a new head is drawn once and shared."""
    from functools import partial

    import torch

    from cald_speech.student import load_model
    from cald_speech.tasks.asr.model import load_ctc_model, share_start_head
    from cald_speech.tasks.modes import build_models

    t_out, _ = teacher
    step0 = load_model(t_out / "waypoints" / "step-0")
    step1 = load_model(t_out / "waypoints" / "step-1")
    assert not torch.equal(step0.lm_head.weight, step1.lm_head.weight)  # the start, saved
    enc = tmp_path / "ssl"
    step0.base_model.save_pretrained(enc)  # encoder only, as a pretrained checkpoint
    vocab = step0.lm_head.out_features
    load = partial(load_ctc_model, vocab_size=vocab)
    model, t, _, _ = build_models({"mode": "trajectory", "pretrained_source": str(enc)}, load)
    assert torch.equal(model.lm_head.weight, t.lm_head.weight)
    assert torch.equal(model.lm_head.bias, t.lm_head.bias)
    hp = {"mode": "waypoint", "pretrained_source": str(enc),
          "waypoint_dir": str(t_out / "waypoints")}
    model, _, g, _ = build_models(hp, load)
    assert not torch.equal(model.lm_head.weight, step0.lm_head.weight)  # drawn at load time
    share_start_head(model, hp, g, load, vocab)
    assert torch.equal(model.lm_head.weight, step0.lm_head.weight)
    assert g.waypoint_index(0) == 1  # step-0 is the start, never a teacher


def test_speed_and_longform_benchmarks_on_each_family(teacher, tmp_path):
    from cald_speech.bench import cli
    from cald_speech.student.cli import main as convert_main

    t_out, _ = teacher
    model, student = t_out / "model", tmp_path / "student"
    assert convert_main([str(model), str(student)]) == 0
    assert cli.main(["speed", "--model", str(model), str(student), "--minutes", "0.01",
                     "--in-process", "--no-plot", "--out-dir", str(tmp_path / "speed")]) == 0
    runs = json.loads((tmp_path / "speed" / "speed.json").read_text())["results"]
    assert {r["status"] for r in runs} == {"ok"} and len(runs) >= 3
    csv = sorted(t_out.rglob("test-clean.csv"))[0]
    assert cli.main(["longform", "--teacher", str(model), "--student", str(student),
                     "--csv", str(csv), "--minutes", "0.02", "--in-process",
                     "--out-dir", str(tmp_path / "long")]) == 0
    runs = json.loads((tmp_path / "long" / "longform.json").read_text())["results"]
    assert {r["status"] for r in runs} == {"ok"}
    assert {r["system"] for r in runs} >= {"teacher-windowed", "student-onepass"}
