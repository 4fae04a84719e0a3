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


DUMP_TEACHER = """
import os, sys, torch
from cald_speech.distill import brain as brains
from cald_speech.tasks.asr import recipe

fit = brains.DistillBrain.fit

def fit_then_dump(self, *args, **kwargs):
    out = fit(self, *args, **kwargs)
    state = {k: v.detach().clone() for k, v in self.teacher.state_dict().items()}
    torch.save(state, os.path.join(os.environ["DUMP_DIR"], f"teacher{os.environ['RANK']}.pt"))
    return out

brains.DistillBrain.fit = fit_then_dump
recipe.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_trajectory_keeps_one_teacher_under_torchrun(tmp_path):
    # Trajectory guidance co-trains its teacher outside DDP: every process must end
    # with the same teacher, and that teacher must have moved from the pretrained one.
    import torch
    import yaml

    from cald_speech.data.tokenizer import CharTokenizer
    from cald_speech.tasks.asr.model import ctc_model_from_config

    root = tmp_path / "LibriSpeech"
    write_split(root, "train-clean-100", 1, 6)
    write_split(root, "dev-clean", 2, 2)
    write_split(root, "test-clean", 3, 2)
    torch.manual_seed(0)
    pretrained = tmp_path / "pretrained"
    model = ctc_model_from_config(yaml.safe_load(TINY), len(CharTokenizer()))
    model.save_pretrained(pretrained)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    wrapper = tmp_path / "dump_teacher.py"
    wrapper.write_text(DUMP_TEACHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DUMP_DIR": str(tmp_path)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_port=29535", str(wrapper), str(RECIPE / "hparams/cald.yaml"),
        "--data_folder", str(root), "--output_folder", str(tmp_path / "run"),
        "--feature_cache_folder", str(tmp_path / "cache"), "--mode", "trajectory",
        "--pretrained_source", str(pretrained), "--teacher_update_every", "1",
        "--number_of_epochs", "1", "--batch_size", "1", "--device", "cpu",
        "--distributed_backend", "gloo", "--log_every", "1",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    t0, t1 = (torch.load(tmp_path / f"teacher{r}.pt") for r in (0, 1))
    assert t0.keys() == t1.keys()
    for key in t0:
        assert torch.equal(t0[key], t1[key]), key
    moved = [k for k in t0 if k in start and not torch.equal(t0[k], start[k])]
    assert moved, "the co-trained teacher did not change"


def _average_in_process(rank, port, out):
    import torch
    import torch.distributed as dist

    from cald_speech.distill.optim import average_gradients

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
