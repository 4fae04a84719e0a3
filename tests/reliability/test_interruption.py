"""Interruption loses nothing: a recipe killed with SIGKILL resumes to the same weights.

Real subprocesses run the LibriSpeech CTC recipe on a tiny corpus, with dropout and
time masking on (so the random generators matter), a checkpoint after every update.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cald_speech.distill.checkpoints import PARTIAL
from tests.integration.test_asr_recipe import TINY, write_split

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "LibriSpeech" / "ASR"
STEPS = 9  # 6 training utterances in batches of 2, 3 epochs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("interrupt")
    root = base / "LibriSpeech"
    write_split(root, "train-clean-100", 1, 6)
    write_split(root, "dev-clean", 2, 2)
    write_split(root, "test-clean", 3, 2)
    cfg = base / "tiny.yaml"
    cfg.write_text(TINY.replace("mask_time_prob: 0.0", "mask_time_prob: 0.3\nmask_time_length: 2")
                   + "hidden_dropout: 0.2\nactivation_dropout: 0.1\n")
    return base, cfg


def command(base, cfg, out):
    return [sys.executable, str(RECIPE / "train.py"), str(RECIPE / "hparams" / "finetune.yaml"),
            "--data_folder", str(base), "--output_folder", str(out),
            "--feature_cache_folder", str(base / "cache"), "--model_config", str(cfg),
            "--number_of_epochs", "3", "--batch_size", "2", "--device", "cpu",
            "--warmup_updates", "2", "--total_updates", str(STEPS), "--log_every", "1",
            "--waypoint_every", "null", "--ckpt_interval_steps", "1",
            "--ckpt_interval_minutes", "0", "--seed", "3"]


def run(cmd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, env=env, capture_output=True, cwd=ROOT)


def weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def logged_steps(out):
    """The update numbers of the step log, in order (every run appends to it)."""
    return [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()]


def newest_checkpoint_step(out):
    """Updates made before the newest complete checkpoint: where a re-run resumes."""
    return max(yaml.safe_load((ckpt / "brain.ckpt").read_text())["optimizer_step"]
               for ckpt in (out / "save").glob("CKPT+*"))


def assert_resumed(out, before, done, total=STEPS):
    """The killed run logged updates 1 to ``before``; the re-run only those after the
    checkpoint it resumed from (``done`` updates) up to ``total``, each once: a run
    restarted from scratch would log every update again."""
    steps = logged_steps(out)
    assert steps[:before] == list(range(1, before + 1))
    assert steps[before:] == list(range(done + 1, total + 1)), (before, done, steps)


def test_sigkill_then_resume_gives_the_uninterrupted_weights(setup):
    base, cfg = setup
    ref = base / "ref"
    run(command(base, cfg, ref))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for kill_after in (2, 5):   # killed during the update after this one (epochs 1 and 2)
        out = base / f"killed{kill_after}"
        proc = subprocess.Popen(command(base, cfg, out), env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        steps = out / "steps.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if steps.is_file() and len(steps.read_text().splitlines()) >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
        assert not (out / "model").exists()
        before, done = len(logged_steps(out)), newest_checkpoint_step(out)
        assert 1 <= kill_after - 1 <= done <= before
        run(command(base, cfg, out))            # the same command resumes
        assert_resumed(out, before, done)
        got, want = weights(out), weights(ref)
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_one(setup, tmp_path):
    """The process dies inside a save; the next run resumes from the last complete one."""
    base, cfg = setup
    out = tmp_path / "run"
    # Die (os._exit, no clean-up) while the 4th checkpoint is being written, after the
    # model file is saved and before the optimiser's.
    dying = tmp_path / "sitecustomize.py"
    dying.write_text(
        "import os, torch\n"
        "import speechbrain.utils.checkpoints as c\n"
        "orig = c.torch_save\n"
        "count = [0]\n"
        "def save(obj, path):\n"
        "    orig(obj, path)\n"
        "    if str(path).endswith('model.ckpt'):\n"
        "        count[0] += 1\n"
        "        if count[0] == 4:\n"
        "            os._exit(9)\n"
        "c.torch_save = save\n"
        "c.DEFAULT_SAVE_HOOKS[torch.nn.Module] = save\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    proc = subprocess.run(command(base, cfg, out), env=env, cwd=ROOT, capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    assert list((out / "save").glob(PARTIAL + "CKPT+*"))   # the save it died in
    before, done = len(logged_steps(out)), newest_checkpoint_step(out)
    assert 1 <= done <= before
    run(command(base, cfg, out))
    assert not list((out / "save").glob(PARTIAL + "*"))
    assert_resumed(out, before, done)
    ref = base / "ref"
    if not (ref / "model").exists():
        run(command(base, cfg, ref))
    got, want = weights(out), weights(ref)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
