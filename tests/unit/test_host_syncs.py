"""A training step waits for the device once: the fault decision of the step.

Counted on CPU by ``tools/count_syncs.py`` (reads of device values on the host, as a GPU
would have them): the distillation core and the mixers read nothing else in a step —
loss terms are summed on the device, the mixers' padding checks do not read the mask —
except the waveforms the feature cache takes to the host, one per utterance. The CTC
loss and transformers' SpecAugment and SDPA mask code read a few values of their own.
"""

import importlib.util
import statistics
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "count_syncs.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("count_syncs", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_training_step_reads_the_device_once_in_the_distillation_core(tmp_path):
    batch = 2
    res = load_tool().measure(steps=4, batch=batch, layers=2, log_every=4, folder=tmp_path)
    steps = res["steps"]
    ours = {site: n for site, n in res["sites"].items()
            if site.startswith(("cald_speech/distill", "cald_speech/mixers"))}
    assert not any(site.startswith("cald_speech/mixers") for site in ours), ours
    agree = sum(n for site, n in ours.items() if "(reduce_sum)" in site)
    cache = sum(n for site, n in ours.items() if "[cpu]" in site and "brain.py" in site)
    rest = {site: n for site, n in ours.items()
            if "(reduce_sum)" not in site and not ("[cpu]" in site and "brain.py" in site)}
    # once per step (and once more when a step-log line or the epoch's end is written)
    assert steps <= agree <= steps + 4, ours
    assert cache == batch * steps, ours        # the feature cache's copies
    assert sum(rest.values()) <= 2, rest       # the stage's end: its loss, once
    assert statistics.median(res["plain"]) <= 1 + batch + 7, res["sites"]
