"""The CTC recipe under torchrun with two CPU processes (gloo backend)."""

import json
import os
import subprocess
import sys

import pytest

from tests.integration.test_asr_recipe import RECIPE, TINY, write_split


@pytest.mark.slow
@pytest.mark.parametrize("sorting,port", [("random", 29533), ("ascending", 29534)])
def test_recipe_runs_under_torchrun_with_two_processes(tmp_path, sorting, port):
    # The tiny model keeps transformers' default LayerDrop (0.1): the two processes
    # drop different layers, which DDP must be told about or it waits forever.
    root = tmp_path / "LibriSpeech"
    write_split(root, "train-clean-100", 1, 6)
    write_split(root, "dev-clean", 2, 2)
    write_split(root, "test-clean", 3, 2)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={port}", str(RECIPE / "train.py"), str(RECIPE / "hparams/finetune.yaml"),
        "--data_folder", str(root), "--output_folder", str(out),
        "--feature_cache_folder", str(tmp_path / "cache"), "--model_config", str(cfg),
        "--number_of_epochs", "1", "--batch_size", "2", "--device", "cpu",
        "--distributed_backend", "gloo", "--waypoint_every", "null", "--log_every", "1",
        "--sorting", sorting,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 6 training items, batch 2, two processes: 2 updates each, logged once (rank 0)
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert (out / "model" / "model.safetensors").exists()
    assert (out / "wer_test-clean.json").exists()
