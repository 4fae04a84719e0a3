"""Training faults: bad items stop a run above a fraction; non-finite steps are skipped.

A skipped step must leave every parameter (and the optimiser state) untouched; a run
whose steps stay non-finite stops, naming the step, the batch and the loss terms.
"""

import logging
import math

import pytest
import speechbrain as sb
import torch

from cald_speech.errors import DataError, NumericalError
from tests.integration.test_brain_ctc import corpus, fit, make_brain, params, tiny_ctc  # noqa: F401


def poison(brain, when, how="loss"):
    """Makes the loss (or the gradients only) non-finite on training batches ``when(step, k)``.

    ``k`` counts the training batches so far; returns the IDs of the poisoned batches.
    """
    orig = brain.compute_objectives
    seen, calls = [], [0]

    def objectives(predictions, batch, stage):
        loss = orig(predictions, batch, stage)
        if stage == sb.Stage.TRAIN:
            calls[0] += 1
            if when(brain.optimizer_step, calls[0] - 1):
                seen.append(list(batch.id))
                if how == "loss":
                    return loss * float("nan")
                predictions["logits"].register_hook(lambda g: g * float("nan"))
        return loss

    brain.compute_objectives = objectives
    return seen


def test_a_non_finite_loss_skips_the_whole_step(tmp_path, corpus, caplog):  # noqa: F811
    ref, ds, counter = make_brain(tmp_path / "ref", tiny_ctc(0), corpus, cache=False)
    fit(ref, ds, counter)          # 6 items in batches of 2: 3 steps
    model = tiny_ctc(0)
    brain, ds, counter = make_brain(tmp_path / "run", model, corpus, cache=False)
    before = {}
    orig = brain.on_fit_batch_end

    def end(batch, outputs, loss, stepped):
        before.setdefault(len(before), (params(model), stepped))
        return orig(batch, outputs, loss, stepped)

    brain.on_fit_batch_end = end
    hit = poison(brain, lambda step, k: k == 1)
    with caplog.at_level(logging.WARNING):
        fit(brain, ds, counter)
    assert brain.optimizer_step == 2 and brain.faults.nonfinite_total == 1
    # the poisoned (second) batch changed nothing: after it, the weights of the first step
    first, _ = before[0]
    second, stepped = before[1]
    assert not stepped
    for k in first:
        assert torch.equal(first[k], second[k]), k
    assert f"step 1 skipped (non-finite loss or gradient): batch {hit[0]}" in caplog.text
    assert brain.train_stats["skipped_steps"] == 1
    assert math.isfinite(brain.train_stats["loss"])  # the skipped batch is not averaged in


def test_a_non_finite_gradient_skips_the_step(tmp_path, corpus):  # noqa: F811
    model = tiny_ctc(0)
    brain, ds, counter = make_brain(tmp_path, model, corpus, cache=False)
    orig = brain.optimizers_step
    snap = {}

    def optimizers_step():
        if brain.optimizer_step == 0 and not snap:  # first step: one gradient becomes NaN
            snap.update(params(model))
            model.lm_head.weight.grad[0, 0] = float("nan")
        return orig()

    brain.optimizers_step = optimizers_step
    fit(brain, ds, counter, batch_size=6)      # one step per epoch
    assert brain.optimizer_step == 0 and brain.faults.nonfinite_total == 1
    for k, v in params(model).items():
        assert torch.equal(v, snap[k]), k


def test_non_finite_steps_in_a_row_stop_the_run_with_the_details(tmp_path, corpus):  # noqa: F811
    brain, ds, counter = make_brain(tmp_path, tiny_ctc(0), corpus, cache=False, epochs=3,
                                    max_nonfinite_steps=4)
    hit = poison(brain, lambda step, k: True)
    with pytest.raises(NumericalError, match=r"4 optimiser steps in a row .* step 0, batch "
                       + r"\[" + r".*loss terms \{.*'total': nan") as err:
        fit(brain, ds, counter)
    assert str(hit[3]) in str(err.value)
    assert "precision: fp32" in str(err.value)


def test_isolated_faults_do_not_stop_the_run(tmp_path, corpus):  # noqa: F811
    brain, ds, counter = make_brain(tmp_path, tiny_ctc(0), corpus, cache=False, epochs=4,
                                    max_nonfinite_steps=2)
    hit = poison(brain, lambda step, k: k in (1, 3, 5), how="grad")   # never two in a row
    fit(brain, ds, counter)
    assert len(hit) == 3 and brain.faults.nonfinite_total == 3
    assert brain.optimizer_step == 12 - 3


def test_too_many_bad_items_stop_the_run_naming_the_list(tmp_path, corpus):  # noqa: F811
    listed = tmp_path / "bad_items.tsv"
    brain, ds, counter = make_brain(tmp_path, tiny_ctc(0), corpus, cache=False, epochs=2,
                                    bad_items_file=str(listed), max_bad_fraction=0.2)
    for name in ("u1.flac", "u4.flac"):
        victim = corpus.parent / name
        victim.write_bytes(victim.read_bytes()[:60])   # passes the header check only
    with pytest.raises(DataError, match=r"bad_items\.tsv: 2 of 6 training items in epoch 1 "
                                        r"had unreadable audio .*max_bad_fraction=0\.2"):
        fit(brain, ds, counter)
    assert sorted(line.split("\t")[1] for line in listed.read_text().splitlines()) == [
        "u1", "u4"]
