"""The LibriSpeech CTC recipe end to end on a tiny hand-made corpus, in every mode."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb

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


def edits(ref, hyp):
    """Levenshtein distance between two sequences (words, or the characters of a text)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def scored_utterances(path):
    """{utterance id: (reference words, hypothesis words)} of a per-utterance WER file.

    The file is SpeechBrain's ``ErrorRateStats.write_stats`` output: per utterance an
    ``ID, %WER ...`` line, then the reference, the edit operations and the hypothesis,
    tokens separated by ``;``, ``<eps>`` where a side has no word.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out = {}
    for i, line in enumerate(lines):
        m = re.match(r"^(\S+), %WER ", line)
        if m:
            ref, hyp = ([t.strip() for t in lines[j].split(";")] for j in (i + 1, i + 3))
            out[m.group(1)] = ([t for t in ref if t != "<eps>"], [t for t in hyp if t != "<eps>"])
    return out


def recomputed_rates(path):
    """Corpus WER and CER (%) recomputed from a per-utterance file's words, as the recipe
    scores them (CER over the characters of the words joined by single spaces)."""
    pairs = list(scored_utterances(path).values())
    words = sum(edits(r, h) for r, h in pairs) / sum(len(r) for r, _ in pairs)
    chars = (sum(edits(" ".join(r), " ".join(h)) for r, h in pairs)
             / sum(len(" ".join(r)) for r, _ in pairs))
    return 100 * words, 100 * chars


def check_wer_files(path, stats, ids):
    """The WER and CER of ``stats`` and of the ``.json`` beside the per-utterance file
    ``path`` equal those recomputed from it; it holds every utterance of ``ids`` once,
    and the ``_utterances.jsonl`` beside it the same transcripts and their error counts."""
    scored = scored_utterances(path)
    assert sorted(scored) == sorted(ids)
    wer, cer = recomputed_rates(path)
    base = os.path.splitext(path)[0]
    summary = json.loads(Path(base + ".json").read_text())
    for key, value in (("WER", wer), ("CER", cer)):
        assert stats[key] == pytest.approx(value) and summary[key] == pytest.approx(value), key
    rows = [json.loads(x) for x in Path(base + "_utterances.jsonl").read_text().splitlines()]
    assert {r["ID"]: (r["ref"].split(), r["hyp"].split()) for r in rows} == scored
    for r in rows:
        assert (r["word_errors"], r["ref_words"], r["char_errors"], r["ref_chars"]) == (
            edits(r["ref"].split(), r["hyp"].split()), len(r["ref"].split()),
            edits(r["ref"], r["hyp"]), len(r["ref"])), r["ID"]


def check_test_wer(out, results, split="test-clean", ids=("3-10-0000", "3-10-0001")):
    """The recipe's test WER and CER are those of its per-utterance files."""
    check_wer_files(out / f"wer_{split}.txt", results[split], ids)


def run(hparams, out, corpus, *extra, warmup=1):
    argv = [
        str(hparams if os.path.isabs(hparams) else RECIPE / "hparams" / hparams),
        "--data_folder", str(corpus),
        "--output_folder", str(out), "--feature_cache_folder", str(out.parent / "cache"),
        "--number_of_epochs", "1", "--batch_size", "3", "--device", "cpu",
        "--warmup_updates", str(warmup), "--total_updates", "10", "--log_every", "1", *extra,
    ]
    return run_asr(argv)


@pytest.fixture(scope="module", params=["wav2vec2", "hubert", "wavlm"])
def teacher(request, tmp_path_factory, corpus):
    """A fine-tuned tiny teacher of each model family (and its waypoints)."""
    out = tmp_path_factory.mktemp(f"runs-{request.param}") / "finetune"
    cfg = out.parent / "tiny.yaml"
    cfg.write_text(TINY)
    # No warmup: both updates move the weights (a warmup's first learning rate is 0), so
    # that the waypoints step-0, step-1 and step-2 are three different teachers.
    results = run("finetune.yaml", out, corpus, "--model_config", str(cfg), "--waypoint_every", "1",
                  "--model_family", request.param, warmup=0)
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == request.param
    return out, results


def test_finetune_writes_model_waypoints_and_wer(teacher):
    out, results = teacher
    assert set(results) == {"test-clean"}
    check_test_wer(out, results)
    assert (out / "model" / "config.json").exists()
    assert (out / "model" / "tokenizer.json").exists()
    assert sorted(os.listdir(out / "waypoints")) == ["step-0", "step-1", "step-2"]
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and "task" in steps[0]


def teachers_of_updates(monkeypatch, folders):
    """Records, per training update that runs a teacher, the update's step and which of
    the model ``folders`` ({name: folder}) holds exactly the teacher's weights then (an
    empty tuple: none, a teacher trained during the run)."""
    import torch
    from safetensors.torch import load_file

    from cald_speech.distill.brain import DistillBrain

    saved = {name: load_file(str(Path(f) / "model.safetensors")) for name, f in folders.items()}
    seen, forward = [], DistillBrain.compute_forward

    def recording(self, batch, stage):
        out = forward(self, batch, stage)
        if stage == sb.Stage.TRAIN and "t_logits" in out:
            weights = self.teacher.state_dict()
            same = []
            for name, w in saved.items():
                shared = [k for k in w if k in weights]
                assert len(shared) >= 0.9 * len(w), sorted(set(w) - set(weights))[:5]
                if all(torch.equal(weights[k].cpu(), w[k]) for k in shared):
                    same.append(name)
            seen.append((self.optimizer_step, tuple(same)))
        return out

    monkeypatch.setattr(DistillBrain, "compute_forward", recording)
    return seen


@pytest.mark.parametrize("mode", ["unguided", "target", "hybrid", "trajectory", "waypoint"])
def test_cald_modes_run_end_to_end(teacher, corpus, tmp_path, mode, monkeypatch):
    t_out, _ = teacher
    folders = {"model": t_out / "model",
               **{p.name: p for p in sorted((t_out / "waypoints").iterdir())}}
    teachers = teachers_of_updates(monkeypatch, folders)
    extra = ["--mode", mode, "--switch_step", "1"]
    if mode in ("unguided", "target", "hybrid"):
        extra += ["--teacher_source", str(t_out / "model")]
    else:
        extra += ["--pretrained_source", str(t_out / "waypoints" / "step-1")]
    if mode == "waypoint":
        extra += ["--waypoint_dir", str(t_out / "waypoints")]
    results = run("cald.yaml", tmp_path / mode, corpus, *extra)
    check_test_wer(tmp_path / mode, results)
    cfg = json.loads((tmp_path / mode / "model" / "config.json").read_text())
    assert cfg["cald"]["mixers"][0]["name"] == "bimamba2"
    steps = [json.loads(x) for x in (tmp_path / mode / "steps.jsonl").read_text().splitlines()]
    has_layer = [("layer" in s) for s in steps]
    expected = {
        "unguided": [False, False], "target": [True, True], "hybrid": [True, False],
        "trajectory": [True, True], "waypoint": [True, True],
    }[mode]
    assert has_layer == expected
    # the teacher of each update (step, folder holding its weights; None: trained here)
    expected = {
        "unguided": [],
        "target": [(0, "model"), (1, "model")],
        "hybrid": [(0, "model"), (1, "model")],            # logit KD after the switch
        "trajectory": [(0, "step-1"), (1, None)],          # co-trained from step-1
        "waypoint": [(0, "step-1"), (1, "step-2")],        # the earliest waypoint > step
    }[mode]
    assert [step for step, _ in teachers] == [step for step, _ in expected]
    for (step, names), (_, want) in zip(teachers, expected):
        assert names == () if want is None else want in names, (step, names, want)


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
