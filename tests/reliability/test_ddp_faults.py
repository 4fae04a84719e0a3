"""Two processes (gloo, CPU) decide every fault together and stop together.

A fault that one rank sees — a non-finite loss or gradient, unreadable items, the stop
conditions they lead to — must not leave the other rank waiting in a collective: every
step all ranks agree on one reduced flag, skip or apply the step together, and stop
together with the same message. A configuration that leaves a parameter without a
gradient (``spec_augment_layer_loss: off``) must train under DDP, and a two-rank run
killed mid-epoch must resume, with dropout on, to the weights of the uninterrupted run.

Each run is :mod:`tests.reliability.ddp_worker` under ``torch.distributed.run``; a run
that hangs fails by its timeout.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
WORDS = ["A CAT", "THE DOG", "NO", "YES I DO", "IT'S ME", "GO HOME", "RUN", "SEE IT"]
TIMEOUT = 240


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def corpus(folder, huge=None, truncated=()):
    """Eight utterances, ascending in length: rank r of two takes items r, r + 2, ..."""
    rng = np.random.default_rng(0)
    lines = ["ID,duration,wav,spk_id,wrd"]
    folder.mkdir(parents=True, exist_ok=True)
    for i, w in enumerate(WORDS):
        n = 3200 + 400 * i
        wav = (0.1 * rng.standard_normal(n)).astype("float32")
        path = folder / f"u{i}.flac"
        if i == huge:
            wav[:] = 1e30  # finite, but the forward pass overflows
            path = path.with_suffix(".wav")
        sf.write(path, wav, 16000, subtype="FLOAT" if i == huge else None)
        if i in truncated:  # passes the header check, fails when read
            path.write_bytes(path.read_bytes()[:200])
        lines.append(f"u{i},{n / 16000},{path},1,{w}")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    return folder


def launch(scenario, folder, timeout=TIMEOUT):
    """Runs two ranks; returns (exit code, {rank: result}, output tail)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(WORKER), scenario, str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for r in (0, 1):
        (folder / f"rank{r}.json").unlink(missing_ok=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"")[-3000:], (exc.stderr or b"")[-3000:]
        pytest.fail(f"{scenario}: the two ranks hung (no exit within {timeout} s): {out}")
    results = {r: json.loads((folder / f"rank{r}.json").read_text())
               for r in (0, 1) if (folder / f"rank{r}.json").is_file()}
    return proc.returncode, results, proc.stdout[-2000:] + proc.stderr[-4000:]


def same_on_both(results, tail):
    assert set(results) == {0, 1}, tail
    a, b = results[0], results[1]
    assert {k: v for k, v in a.items() if k != "rank"} == \
        {k: v for k, v in b.items() if k != "rank"}, tail
    return a


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_skips_the_step_on_both(tmp_path):
    code, results, tail = launch("nan_loss", corpus(tmp_path))
    assert code == 0, tail
    res = same_on_both(results, tail)
    # 8 items, batch 2, two ranks: 2 steps an epoch, 2 epochs; one skipped
    assert res["updates"] == 3 and res["skipped"] == 1 and "error" not in res


@pytest.mark.slow
def test_nan_losses_on_one_rank_stop_both_with_the_same_message(tmp_path):
    code, results, tail = launch("nan_always", corpus(tmp_path))
    assert code != 0
    res = same_on_both(results, tail)
    kind, message = res["error"]
    assert kind == "NumericalError" and "2 optimiser steps in a row" in message
    # the last step's batch of rank 1, whose loss was not finite, and its terms
    assert "batch ['u5', 'u7'], loss terms {'task'" in message, message
    assert "'total': nan} on rank(s) [1]" in message, message


@pytest.mark.slow
def test_an_overflowing_item_on_one_rank_does_not_hang_the_job(tmp_path):
    # The reproduction of the report: finite but huge samples on one rank.
    code, results, tail = launch("huge", corpus(tmp_path, huge=3))
    assert code == 0, tail
    res = same_on_both(results, tail)
    assert res["skipped"] == 2 and res["updates"] == 2  # the item is in both epochs


@pytest.mark.slow
def test_bad_items_on_one_rank_stop_both_with_the_same_message(tmp_path):
    code, results, tail = launch("bad_items", corpus(tmp_path, truncated=(1, 3)))
    assert code != 0
    kind, message = same_on_both(results, tail)["error"]
    assert kind == "DataError" and "2 of 8 training items in epoch 1" in message, message
    listed = (tmp_path / "bad_items.tsv").read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in listed) == ["u1", "u3"]


@pytest.mark.slow
def test_spec_augment_off_for_the_layer_loss_trains_under_ddp(tmp_path):
    code, results, tail = launch("spec_off", corpus(tmp_path))
    assert code == 0, tail
    res = same_on_both(results, tail)
    assert res["updates"] == 4 and "error" not in res


@pytest.mark.slow
def test_two_ranks_killed_mid_epoch_resume_to_the_uninterrupted_weights(tmp_path):
    # Dropout and time masking on: each rank must get its own generators back.
    whole = corpus(tmp_path / "whole")
    code, results, tail = launch("dropout:0", whole)
    assert code == 0, tail
    expected = same_on_both(results, tail)
    assert expected["updates"] == 6
    cut = corpus(tmp_path / "cut")
    code, results, tail = launch("dropout:3", cut)
    assert code != 0 and not results  # stopped dead after the checkpoint of update 3
    saved = sorted((cut / "save").glob("CKPT+*"))
    assert saved, tail
    code, results, tail = launch("dropout:0", cut)  # the same command resumes
    assert code == 0, tail
    assert same_on_both(results, tail) == expected
