"""What a training run does about bad items and numerical faults.

Two promises, kept by :class:`FaultGuard` for the distillation Brain (resuming after
an interruption is :mod:`cald_speech.distill.checkpoints`):

- **bad items** (audio that could not be read at training time) are skipped: counted per
  epoch, listed in a file (``epoch<TAB>ID<TAB>audio``), and the run stops with a message
  naming that file once more than ``max_bad_fraction`` of an epoch's items were bad;
- **a non-finite loss or gradient** skips the whole optimiser step (no parameter moves),
  is counted and logged with the step, the batch's IDs and its loss terms;
  ``max_nonfinite_steps`` such steps in a row stop the run with the same details.

In a distributed run every process takes these decisions together:
:meth:`FaultGuard.agree` reduces one small vector per optimiser step over the processes
(non-finite flags, items seen, bad items), so all of them skip or apply the same steps,
count the same items and stop at the same step with the same message. A process never
decides alone, which would leave the others waiting in a collective operation.

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

import torch

from cald_speech.errors import DataError, NumericalError

logger = logging.getLogger(__name__)

#: Items seen in an epoch before the bad-item fraction is checked mid-epoch.
MIN_ITEMS_FOR_FRACTION = 50


def _process_group():
    """(world size, rank, reduction device) of the running process group; (1, 0, None)
    outside one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 1, 0, None
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    return dist.get_world_size(), dist.get_rank(), device


def reduce_sum(values):
    """Sums a 1-D tensor over the processes (one collective); returns a host list.

    Outside a process group it only copies ``values`` to the host. This is the one
    point where a training step waits for the device.

    Example
    -------
    >>> reduce_sum(torch.tensor([1.0, 2.0]))
    [1.0, 2.0]
    """
    world, _, device = _process_group()
    if world > 1:
        import torch.distributed as dist

        values = values.to(device, torch.float64)
        dist.all_reduce(values)
    return values.tolist()


def gather(obj):
    """The ``obj`` of every process, in rank order (``[obj]`` outside a process group).

    A collective operation: every process must call it.

    Example
    -------
    >>> gather({"ids": ["u1"]})
    [{'ids': ['u1']}]
    """
    world, _, _ = _process_group()
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


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

    Example
    -------
    >>> guard = FaultGuard(max_bad_fraction=0.5)
    >>> guard.batch(["a", "b"], [False, True], ["a.wav", "b.wav"])
    >>> guard.agree(torch.tensor(False), step=0, ids=["a", "b"], terms={})  # apply it
    False
    >>> guard.items, guard.bad_items
    (2, 1)
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
        self.items = 0            # this epoch, over all processes
        self.bad_items = 0        # this epoch, over all processes
        self.bad_items_total = 0
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self._pending_items = 0   # this process's, since the last agreement
        self._pending_bad = []

    def start_epoch(self, epoch):
        """Resets the per-epoch counts."""
        self.epoch, self.items, self.bad_items = epoch, 0, 0
        self._pending_items, self._pending_bad = 0, []

    def batch(self, ids, bad, wavs=None):
        """Records a training batch of this process: ``ids`` of its items, ``bad`` flags
        (one per item). Counted at the next :meth:`agree` or :meth:`flush`."""
        self._pending_items += len(ids)
        self._pending_bad += [(i, (wavs or [""] * len(ids))[k])
                              for k, i in enumerate(ids) if bad[k]]

    def agree(self, nonfinite, step, ids, terms, loss_nonfinite=None):
        """The decision of one optimiser step, taken by every process together.

        Arguments
        ---------
        nonfinite : torch.Tensor
            Bool scalar (on any device): this process saw a non-finite loss or gradient.
        step : int
            The optimiser step.
        ids : list of str
            This process's batch (named in the log and in the stop message).
        terms : dict
            This process's loss terms.
        loss_nonfinite : torch.Tensor, optional
            Bool scalar: the loss itself was not finite here. A non-finite gradient
            reaches every process through the gradient all-reduce; the stop message
            names the batches of the processes whose loss was not finite, where any.

        Returns
        -------
        bool
            True: every process skips this step.

        Raises
        ------
        DataError, NumericalError
            On every process at once, with the same message.
        """
        # Filled on the flag's device (scalar fills, no copy that would wait for it).
        vec = torch.zeros(3, dtype=torch.float64, device=nonfinite.device)
        vec[0] = nonfinite.detach().reshape(())
        vec[1], vec[2] = self._pending_items, len(self._pending_bad)
        flags, items, bad = reduce_sum(vec)
        self._count(int(items), int(bad))
        if not flags:
            self.good_step()
            return False
        loss_bad = bool(nonfinite if loss_nonfinite is None else loss_nonfinite)
        seen = gather((loss_bad, bool(nonfinite), list(ids),
                       {k: _number(v) for k, v in terms.items()}))
        if len(seen) == 1:
            self.skipped_step(step, ids, terms)
        else:
            ranks = ([r for r, s in enumerate(seen) if s[0]]
                     or [r for r, s in enumerate(seen) if s[1]])
            self.skipped_step(step, [i for r in ranks for i in seen[r][2]],
                              seen[ranks[0]][3], ranks=ranks)
        return True

    def flush(self):
        """Counts the items seen since the last step (every process together); then
        checks the epoch's bad-item fraction. Call at the end of a training epoch."""
        counts = torch.tensor([self._pending_items, len(self._pending_bad)],
                              dtype=torch.float64)
        items, bad = reduce_sum(counts)
        self._count(int(items), int(bad), check=False)
        self.check_fraction()

    def _count(self, items, bad, check=True):
        mine, self._pending_items, self._pending_bad = self._pending_bad, 0, []
        self.items += items
        if bad:
            everyone = [b for part in gather(mine) for b in part]
            self.bad_items += bad
            self.bad_items_total += bad
            if self.bad_items_file and _process_group()[1] == 0:
                folder = os.path.dirname(os.path.abspath(self.bad_items_file))
                os.makedirs(folder, exist_ok=True)
                with open(self.bad_items_file, "a", encoding="utf-8") as f:
                    f.writelines(f"{self.epoch}\t{i}\t{w}\n" for i, w in everyone)
        if check and self.items >= MIN_ITEMS_FOR_FRACTION:
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

    def skipped_step(self, step, ids, terms, ranks=None):
        """Records an optimiser step skipped for a non-finite loss or gradient.

        ``ranks``: the processes that saw it (in a distributed run; ``ids`` and
        ``terms`` are theirs).
        """
        self.nonfinite_total += 1
        self.nonfinite_run += 1
        terms = {k: _number(v) for k, v in terms.items()}
        where = "" if ranks is None else f" on rank(s) {list(ranks)}"
        logger.warning("step %d skipped (non-finite loss or gradient): batch %s, terms %s%s",
                       step, list(ids), terms, where)
        if self.nonfinite_run >= self.max_nonfinite_steps:
            raise NumericalError(
                f"{self.nonfinite_run} optimiser steps in a row were skipped for a non-finite "
                f"loss or gradient; the last: step {step}, batch {list(ids)}, loss terms "
                f"{terms}{where}. Fix: lower the learning rate or train in fp32 (precision: "
                "fp32), and check those items' audio and transcripts"
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
    """True when every tensor (or number) given is finite everywhere (None is skipped).

    Waits for the device: for checks outside the training step.

    Example
    -------
    >>> all_finite(torch.ones(2), None), all_finite(float("nan"))
    (True, False)
    """
    return all(v is None or bool(torch.isfinite(torch.as_tensor(v)).all()) for v in values)


def nonfinite(*values):
    """A bool scalar on the values' device: some tensor given is not finite everywhere.

    Does not wait for the device (None is skipped).

    Example
    -------
    >>> nonfinite(torch.ones(2), torch.tensor([float("inf")]))
    tensor(True)
    """
    flags = [~torch.isfinite(v.detach()).all() for v in values if v is not None]
    if not flags:
        return torch.tensor(False)
    out = flags[0]
    for f in flags[1:]:
        out = out | f.to(out.device)
    return out
