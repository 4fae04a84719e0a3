"""What a training run does about bad items and numerical faults.

Two promises, kept by :class:`FaultGuard` for the distillation Brain (resuming after
an interruption is :mod:`cald_speech.distill.checkpoints`):

- **bad items** (audio that could not be read at training time) are skipped: counted per
  epoch, listed in a file (``epoch<TAB>ID<TAB>audio``), and the run stops with a message
  naming that file once more than ``max_bad_fraction`` of an epoch's items were bad;
- **a non-finite loss or gradient** skips the whole optimiser step (no parameter moves),
  is counted and logged with the step, the batch's IDs and its loss terms;
  ``max_nonfinite_steps`` such steps in a row stop the run with the same details.

Example
-------
>>> guard = FaultGuard(max_nonfinite_steps=2)
>>> guard.skipped_step(7, ["u1", "u2"], {"task": float("nan")})
>>> guard.skipped_step(8, ["u3"], {"task": float("inf")})
Traceback (most recent call last):
  ...
cald_speech.errors.NumericalError: 2 optimiser steps in a row were skipped ... the last: step 8,
batch ['u3'], loss terms {'task': inf}...
>>> guard.nonfinite_total
2
"""

import logging
import os

from cald_speech.errors import DataError, NumericalError

logger = logging.getLogger(__name__)

#: Items seen in an epoch before the bad-item fraction is checked mid-epoch.
MIN_ITEMS_FOR_FRACTION = 50


class FaultGuard:
    """Counts bad items and skipped steps; stops a run that cannot recover.

    Arguments
    ---------
    max_bad_fraction : float
        Largest share of an epoch's items that may be bad (1.0: never stop).
    max_nonfinite_steps : int
        Skipped steps in a row that stop the run.
    bad_items_file : str, optional
        Where bad items are listed (appended; ``epoch<TAB>ID<TAB>audio``).
    """

    def __init__(self, max_bad_fraction=0.05, max_nonfinite_steps=5, bad_items_file=None):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction={max_bad_fraction} must be in [0, 1]")
        if max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps={max_nonfinite_steps} must be >= 1")
        self.max_bad_fraction = max_bad_fraction
        self.max_nonfinite_steps = max_nonfinite_steps
        self.bad_items_file = bad_items_file
        self.epoch = 0
        self.items = 0            # this epoch
        self.bad_items = 0        # this epoch
        self.bad_items_total = 0
        self.nonfinite_total = 0
        self.nonfinite_run = 0

    def start_epoch(self, epoch):
        """Resets the per-epoch counts."""
        self.epoch, self.items, self.bad_items = epoch, 0, 0

    def batch(self, ids, bad, wavs=None):
        """Records a training batch: ``ids`` of its items, ``bad`` flags (one per item)."""
        self.items += len(ids)
        bad_ids = [(i, (wavs or [""] * len(ids))[k]) for k, i in enumerate(ids) if bad[k]]
        if not bad_ids:
            return
        self.bad_items += len(bad_ids)
        self.bad_items_total += len(bad_ids)
        if self.bad_items_file:
            os.makedirs(os.path.dirname(os.path.abspath(self.bad_items_file)), exist_ok=True)
            with open(self.bad_items_file, "a", encoding="utf-8") as f:
                f.writelines(f"{self.epoch}\t{i}\t{w}\n" for i, w in bad_ids)
        if self.items >= MIN_ITEMS_FOR_FRACTION:
            self.check_fraction()

    def check_fraction(self):
        """Raises DataError when more than ``max_bad_fraction`` of the items were bad."""
        if self.items and self.bad_items / self.items > self.max_bad_fraction:
            where = self.bad_items_file or "the log"
            raise DataError(
                where, f"{self.bad_items} of {self.items} training items in epoch "
                f"{self.epoch} had unreadable audio (more than max_bad_fraction="
                f"{self.max_bad_fraction}); they are listed there",
                "repair or remove those files (cald-prepare --check-audio full finds them), "
                "or raise max_bad_fraction",
            )

    def skipped_step(self, step, ids, terms):
        """Records an optimiser step skipped for a non-finite loss or gradient."""
        self.nonfinite_total += 1
        self.nonfinite_run += 1
        terms = {k: _number(v) for k, v in terms.items()}
        logger.warning("step %d skipped (non-finite loss or gradient): batch %s, terms %s",
                       step, list(ids), terms)
        if self.nonfinite_run >= self.max_nonfinite_steps:
            raise NumericalError(
                f"{self.nonfinite_run} optimiser steps in a row were skipped for a non-finite "
                f"loss or gradient; the last: step {step}, batch {list(ids)}, loss terms "
                f"{terms}. Fix: lower the learning rate or train in fp32 (precision: fp32), "
                "and check those items' audio and transcripts"
            )

    def good_step(self):
        """An optimiser step was applied: the run of skipped steps ends."""
        self.nonfinite_run = 0


def _number(v):
    try:
        return round(float(v), 6)
    except (TypeError, ValueError):
        return v


def all_finite(*values):
    """True when every tensor (or number) given is finite everywhere (None is skipped)."""
    import torch

    return all(v is None or bool(torch.isfinite(torch.as_tensor(v)).all()) for v in values)

