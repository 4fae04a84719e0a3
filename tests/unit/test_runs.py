"""cald-bench runs: result tables read back from recipe output folders."""

import json

import torch
from safetensors.torch import save_file

from cald_speech.bench import runs


def _steps(folder, steps):
    lines = [json.dumps({"step": s, "time": 100.0 + 2 * s, "task": 1.0 / s}) for s in steps]
    (folder / "steps.jsonl").write_text("\n".join(lines) + "\n")


def test_ctc_and_intent_runs_are_summarized(tmp_path):
    ctc = tmp_path / "ctc"
    (ctc / "model").mkdir(parents=True)
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)},
              str(ctc / "model" / "model.safetensors"))
    (ctc / "model" / "cald_info.json").write_text(json.dumps({"mode": "target", "updates": 76}))
    (ctc / "wer_test-clean.json").write_text(json.dumps({"WER": 12.5, "CER": 4.0}))
    (ctc / "wer_valid.json").write_text(json.dumps({"WER": 99.0, "CER": 99.0}))
    (ctc / "train_log.txt").write_text(
        "epoch: 1, updates: 38 - train loss: 2\nepoch: 2, updates: 76 - train loss: 1\n"
        "split: test-clean, updates: 76 - test loss: 1\n"
    )
    _steps(ctc, [10, 20, 70])           # sampled every 10: the last update is not logged

    intent = tmp_path / "intent"
    (intent / "model" / "encoder").mkdir(parents=True)
    save_file({"w": torch.zeros(10)}, str(intent / "model" / "encoder" / "model.safetensors"))
    save_file({"h": torch.zeros(2, 3)}, str(intent / "model" / "intent_head.safetensors"))
    (intent / "intent_test.json").write_text(json.dumps(
        {"intent_acc": 50.0, "sa_acc": 60.0, "confusions": [["a", "b", 3]]}))
    _steps(intent, [10, 20])

    summaries = [runs.summarize_run(ctc, "ctc"), runs.summarize_run(intent, "intent")]
    assert summaries[0]["updates"] == 76 and summaries[0]["best_update"] == 76
    assert summaries[0]["parameters"] == 17 and summaries[0]["wall_s"] == 120.0
    assert set(summaries[0]["splits"]) == {"test-clean"}        # last-epoch valid left out
    assert summaries[1]["updates"] == 20 and summaries[1]["parameters"] == 16
    rows = runs.results_rows(summaries, ["WER", "intent_acc", "sa_acc"])
    assert rows[0]["WER test-clean"] == 12.5 and "intent_acc test" not in rows[0]
    assert rows[1]["intent_acc test"] == 50.0 and rows[1]["sa_acc test"] == 60.0


def test_learning_curve_is_read_per_epoch_and_plotted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.txt").write_text(
        "epoch: 1, updates: 938, lr_encoder: 1.00e-03 - train loss: 2.2, bad_items: 0 - "
        "valid loss: 1.5, valid CER: 41.25, valid WER: 88.0\n"
        "epoch: 2, updates: 1876, lr_encoder: 9.00e-04 - train loss: 1.2 - valid loss: 0.9, "
        "valid CER: 2.10e+01, valid WER: 60.5\n"
        "split: test, updates: 1876 - test loss: 1.0, test CER: 22.0\n")
    summary = runs.summarize_run(run)
    assert summary["valid_curve"] == [
        {"epoch": 1, "updates": 938, "CER": 41.25, "WER": 88.0},
        {"epoch": 2, "updates": 1876, "CER": 21.0, "WER": 60.5}]
    png = runs.plot_learning_curves([summary], tmp_path / "curve.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert runs.plot_learning_curves([runs.summarize_run(tmp_path)], tmp_path / "x.png") is None
