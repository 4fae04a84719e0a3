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


def _average_in_process(rank, port, out):
    import torch
    import torch.distributed as dist

    from cald_speech.brains import average_gradients

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2, 2))
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    a.grad = torch.full((3,), float(rank + 1))
    if rank == 1:  # e.g. a layer that LayerDrop skipped in process 0
        b.grad = torch.full((2, 2), 4.0)
    average_gradients([a, b, frozen])
    torch.save({"a": a.grad, "b": b.grad, "frozen": frozen.grad}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_average_gradients_over_two_processes(tmp_path):
    import socket

    import torch
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_average_in_process, args=(port, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        g = torch.load(tmp_path / f"{rank}.pt")
        assert torch.equal(g["a"], torch.full((3,), 1.5))
        assert torch.equal(g["b"], torch.full((2, 2), 2.0))
        assert g["frozen"] is None
