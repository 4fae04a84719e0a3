"""A run resumed mid-epoch logs the epoch as the uninterrupted run does."""

import pytest
import speechbrain as sb

from tests.integration.test_brain_ctc import (  # noqa: F401  (the corpus fixture)
    Crash,
    corpus,
    fit,
    make_brain,
    params,
    tiny_ctc,
)


def test_resumed_epoch_logs_the_same_sums_and_counts(tmp_path, corpus):  # noqa: F811
    victim = tmp_path / "u5.flac"  # unreadable when read (after the header check)
    whole = victim.read_bytes()

    def brain_of(folder, model):
        victim.write_bytes(whole)
        made = make_brain(folder, model, corpus, cache=False, epochs=2, max_bad_fraction=0.5)
        victim.write_bytes(whole[:60])
        return made

    ref = tiny_ctc(3)
    init = params(ref)
    brain, ds, counter = brain_of(tmp_path / "a", ref)
    fit(brain, ds, counter, batch_size=1)
    expected = dict(brain.train_stats)
    assert expected["bad_items"] == 1 and brain.bad_items_total == 2

    model = tiny_ctc(3)
    model.load_state_dict(init)
    brain, ds, counter = brain_of(tmp_path / "b", model)
    brain.ckpt_interval_steps = 1
    orig = brain.compute_forward

    def crashing(batch, stage):
        if stage == sb.Stage.TRAIN and brain.optimizer_step == 9:  # mid second epoch
            raise Crash()
        return orig(batch, stage)

    brain.compute_forward = crashing
    with pytest.raises(Crash):
        fit(brain, ds, counter, batch_size=1)

    brain2, ds2, counter2 = brain_of(tmp_path / "b", tiny_ctc(9))
    fit(brain2, ds2, counter2, batch_size=1)
    got = brain2.train_stats
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key
    assert got["task"] == pytest.approx(got["loss"], rel=1e-5)  # one average, not two
    assert brain2.bad_items_total == 2
