"""``make demo``'s pipeline at a minimal scale: every stage, the report, and skipping.

The tests of the demo run itself need the shared data and every synthesizer engine (its
corpus speaks with all of them); the tests of the steps and the command line need neither.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cald_speech.bench.decoding import model_label
from cald_speech.demo import pipeline as demo
from cald_speech.testing import tiny_teacher

RUN = {"batch_size": 4, "number_of_epochs": 1, "warmup_updates": 1, "total_updates": 10,
       "log_every": 1, "seed": 3}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    pretrained = tmp / "pretrained"
    # 20 ms frames, as in real models: the corpus has utterances of several seconds,
    # which a tiny CNN with a small stride would turn into thousands of frames.
    tiny_teacher("wav2vec2-base", head="ctc", seed=0, conv_dim=(32, 32, 32),
                 conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8)).save_pretrained(pretrained)
    config = tmp / "demo.yaml"
    config.write_text(yaml.safe_dump({"tiny": {
        "corpus": {"n_train": 10, "n_dev": 3, "n_test": 3, "seed": 3},
        "pretrained": str(pretrained),
        "teacher": {**RUN, "waypoint_every": None},
        "students": {
            "cald_hybrid": {**RUN, "mode": "hybrid", "switch_step": 2},
            "unguided": {**RUN, "mode": "unguided"},
        },
        "main_student": "cald_hybrid",
        "bench": {"speed_minutes": [0.05], "longform_minutes": 0.2, "window_s": 6,
                  "decoding": {"beam_size": 4, "lm_order": 2, "lm_weights": [0.5],
                               "word_bonuses": [1.0]}},
    }}))
    argv = ["--scale", "tiny", "--config", str(config), "--data", str(tmp / "data"),
            "--results", str(tmp / "results"), "--jobs", "1"]
    assert demo.main(argv) == 0
    return tmp, argv


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_every_stage_writes_its_output(demo_run):
    tmp, _ = demo_run
    runs = tmp / "results" / "runs"
    for name in ("teacher", "cald_hybrid", "unguided"):
        info = json.loads((runs / name / "model" / "cald_info.json").read_text())
        assert info["updates"] > 0
        assert (runs / name / "wer_test-clean.json").is_file()
        assert (runs / name / "wer_dev-clean.json").is_file()
    assert json.loads((runs / "cald_hybrid" / "model" / "cald_info.json").read_text())[
        "mode"] == "hybrid"
    bench = tmp / "results" / "bench"
    for name in ("cald_hybrid", "unguided"):
        summary = json.loads((bench / f"wer_{name}" / "wer.json").read_text())
        assert summary["items"] == 3
    speed = json.loads((bench / "speed" / "speed.json").read_text())
    assert {r["label"] for r in speed["results"]} == {"teacher", "cald_hybrid"}
    assert (bench / "longform" / "longform.json").is_file()
    decoding = json.loads((bench / "decoding" / "decoding.json").read_text())
    assert [model_label(r["model"]) for r in decoding["results"]] == \
        ["teacher", "cald_hybrid", "unguided"]
    for res in decoding["results"]:
        assert [r["decoding"] for r in res["rows"]] == ["greedy", "beam 4", "beam 4 + LM"]
        greedy = json.loads((runs / model_label(res["model"]) / "wer_test-clean.json")
                            .read_text())
        assert 100 * res["rows"][0]["wer"] == pytest.approx(greedy["WER"], abs=1e-6)
    lm = json.loads((tmp / "data" / "lm" / "lm.arpa.json").read_text())
    assert lm["excluded_sentences"] > 0 and lm["order"] == 2


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_report_has_tables_plots_and_commands(demo_run):
    tmp, _ = demo_run
    report = (tmp / "results" / "report.md").read_text()
    for needle in ("| teacher |", "| cald_hybrid |", "| unguided |", "WER test-clean",
                   "relative", "plots/training_curves.png", "plots/wer.png",
                   "recipes/LibriSpeech/ASR/train.py", "cald_speech.bench.cli speed",
                   "## Decoding: greedy vs beam search vs beam search + n-gram LM",
                   "| teacher | beam 4 + LM |", "> **Summary.**", "cald_speech.lm.cli build"):
        assert needle in report, needle
    for png in ("training_curves.png", "wer.png"):
        assert (tmp / "results" / "plots" / png).stat().st_size > 1000


@pytest.mark.shared_data
@pytest.mark.synth_engines
def test_second_run_skips_every_step(demo_run, capsys):
    tmp, argv = demo_run
    before = (tmp / "results" / "runs" / "teacher" / "model" / "model.safetensors").stat()
    capsys.readouterr()
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "running" not in out and out.count("up to date") >= 7
    after = (tmp / "results" / "runs" / "teacher" / "model" / "model.safetensors").stat()
    assert after.st_mtime_ns == before.st_mtime_ns


def test_step_reruns_when_its_command_changes(tmp_path):
    out = tmp_path / "step"

    def step(text):
        code = f"open({str(out / 'out.txt')!r}, 'a').write({text!r})"
        return demo.Step("s", [sys.executable, "-c", code], out,
                         done=lambda: (out / "out.txt").is_file())

    assert step("a").run() == "ran"
    assert step("a").run() == "skipped"
    (out / "out.txt").unlink()                 # interrupted: same command resumes
    assert step("a").run() == "resumed"
    assert step("b").run() == "ran"            # new command: a fresh folder
    assert (out / "out.txt").read_text() == "b"
    previous = tmp_path / "step.previous"      # the old results kept beside it
    assert (previous / "out.txt").read_text() == "a"
    assert step("c").run() == "ran"            # one generation kept
    assert (previous / "out.txt").read_text() == "b"
    assert (out / "out.txt").read_text() == "c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step", "step.previous"]


def test_code_digest_follows_package_recipes_and_hparams(tmp_path):
    files = {"cald_speech/a.py": "x = 1", "recipes/R/train.py": "pass",
             "recipes/R/hparams/h.yaml": "a: 1", "hparams/mixers/m.yaml": "b: 2",
             "hparams/demo.yaml": "small: {}", "README.md": "text"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    base = demo.code_digest(tmp_path)
    for name in ("hparams/demo.yaml", "README.md"):  # reach the steps otherwise, or not
        (tmp_path / name).write_text("changed")
    (tmp_path / "cald_speech" / "__pycache__").mkdir()
    (tmp_path / "cald_speech" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    assert demo.code_digest(tmp_path) == base
    seen = {base}
    for name in ("cald_speech/a.py", "recipes/R/train.py", "recipes/R/hparams/h.yaml",
                 "hparams/mixers/m.yaml"):
        (tmp_path / name).write_text(files[name] + "  # edited")
        seen.add(demo.code_digest(tmp_path))
    assert len(seen) == 5  # every edit changed the digest
    (tmp_path / "cald_speech" / "b.py").write_text("")  # a new module too
    assert demo.code_digest(tmp_path) not in seen


def test_step_of_other_code_is_not_up_to_date(tmp_path):
    out = tmp_path / "step"
    code = f"open({str(out / 'out.txt')!r}, 'a').write('x')"

    def step(digest):
        return demo.Step("s", [sys.executable, "-c", code], out,
                         done=lambda: (out / "out.txt").is_file(), inputs={"code": digest})

    assert step("old").run() == "ran"
    assert step("old").run() == "skipped"
    assert step("new").run() == "ran"
    assert (out / "out.txt").read_text() == "x"  # a fresh folder, not appended to
    assert (tmp_path / "step.previous" / "out.txt").read_text() == "x"


def test_stopping_the_demo_stops_its_step(tmp_path):
    # SIGTERM to the pipeline process must not leave its training step running.
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); " \
            "time.sleep(120)"
    parent = (
        "import signal, sys; from cald_speech.demo import pipeline as demo; "
        "signal.signal(signal.SIGTERM, demo._exit_on_sigterm); "
        f"demo.Step('s', [sys.executable, '-c', {child!r}], {str(tmp_path / 's')!r}, "
        "done=lambda: False).run()"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent])
    deadline = time.time() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    proc.terminate()
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        for _ in range(100):      # reaped by the parent before it exits
            os.kill(child_pid, 0)
            time.sleep(0.1)


def test_failed_step_names_its_log(tmp_path):
    step = demo.Step("broken", [sys.executable, "-c", "raise SystemExit('boom')"],
                     tmp_path / "b", done=lambda: False)
    with pytest.raises(demo.CaldError, match=r"broken failed \(exit 1\).*console.log"):
        step.run()


def test_missing_pretrained_model_says_how_to_build_it(tmp_path, capsys):
    config = tmp_path / "d.yaml"
    cfg = demo.load_scale("small")
    cfg["pretrained"] = str(tmp_path / "nowhere")
    config.write_text(yaml.safe_dump({"x": cfg}))
    rc = demo.main(["--scale", "x", "--config", str(config), "--stages", "pretrained",
                    "--data", str(tmp_path / "d"), "--results", str(tmp_path / "r")])
    assert rc == 1
    assert "tools/make_pretrained.sh" in capsys.readouterr().err


def test_unknown_scale_and_stage(tmp_path, capsys):
    assert demo.main(["--scale", "huge"]) == 2     # a usage error (cald_speech.cli)
    assert "unknown scale 'huge'" in capsys.readouterr().err
    assert demo.main(["--stages", "corpus,dance"]) == 2
    assert "unknown stage" in capsys.readouterr().err
