"""Checkpoints that survive interruption, and runs that resume exactly.

- :class:`AtomicCheckpointer` is SpeechBrain's ``Checkpointer`` except that a checkpoint
  folder appears only once every file in it is written: a process killed during a save
  (preemption, SIGKILL, out of memory) leaves the previous checkpoint as the one to
  resume from. SpeechBrain writes ``CKPT.yaml`` first and the parameter files after it,
  so a kill in between leaves a newest checkpoint that cannot be loaded.
- :class:`RandomState` checkpoints the random generators, each process its own: a run
  resumed from a mid-epoch checkpoint draws the same dropout and masks as the
  uninterrupted run and ends with the same weights.

Example
-------
>>> import tempfile, torch
>>> ckpt = AtomicCheckpointer(tempfile.mkdtemp(), {"w": torch.nn.Linear(2, 2)})
>>> saved = ckpt.save_checkpoint()
>>> saved.path.name.startswith("CKPT+"), sorted(p.name for p in saved.path.iterdir())
(True, ['CKPT.yaml', 'w.ckpt'])
"""

import functools
import logging
import os
import shutil
from pathlib import Path

from speechbrain.utils.checkpoints import Checkpoint, Checkpointer
from speechbrain.utils.checkpoints import mark_as_loader as sb_loader
from speechbrain.utils.checkpoints import mark_as_saver as sb_saver
from speechbrain.utils.checkpoints import register_checkpoint_hooks as sb_checkpoint_hooks
from speechbrain.utils.distributed import ddp_barrier, if_main_process

logger = logging.getLogger(__name__)

#: Prefix of a checkpoint folder still being written (SpeechBrain lists only "CKPT*").
PARTIAL = ".partial-"


class AtomicCheckpointer(Checkpointer):
    """A ``Checkpointer`` whose checkpoints are complete or absent (same arguments)."""

    def _new_checkpoint_dirpath(self):
        path = super()._new_checkpoint_dirpath()
        return path.with_name(PARTIAL + path.name)

    def _custom_checkpoint_dirpath(self, name):
        path = super()._custom_checkpoint_dirpath(name)
        return path.with_name(PARTIAL + path.name)

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=20):  # noqa: B006
        """Saves into a hidden folder, then renames it into place (one atomic step)."""
        saved = super().save_checkpoint(meta, end_of_epoch, name, verbosity)
        ddp_barrier()  # every process has written its files
        if saved is not None and if_main_process():
            final = saved.path.with_name(saved.path.name[len(PARTIAL):])
            if final.exists():  # a custom name saved again
                shutil.rmtree(final)
            os.replace(saved.path, final)
            saved = Checkpoint(final, saved.meta,
                               {k: final / p.name for k, p in saved.paramfiles.items()})
        # Every process must see the renamed folder before anyone lists checkpoints
        # (SpeechBrain's clean-up makes one collective call per deleted checkpoint).
        ddp_barrier()
        return saved

    def recover_if_possible(self, *args, **kwargs):
        """SpeechBrain's recovery, after removing folders of saves that never finished."""
        if if_main_process() and self.checkpoints_dir.is_dir():
            for stale in self.checkpoints_dir.glob(PARTIAL + "*"):
                shutil.rmtree(stale, ignore_errors=True)
        ddp_barrier()
        return super().recover_if_possible(*args, **kwargs)


def _rank():
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_file(path, rank):
    """Where process ``rank`` keeps its random state: ``path`` itself for rank 0, a file
    beside it for the others (named so that SpeechBrain lists only ``path``).

    Example
    -------
    >>> from pathlib import Path
    >>> p = Path("c/random_state.ckpt")
    >>> rank_file(p, 0).name, rank_file(p, 2).name
    ('random_state.ckpt', 'random_state.ckpt.rank2')
    """
    path = Path(path)
    return path if rank == 0 else path.with_name(f"{path.name}.rank{rank}")


# Saved by every process (SpeechBrain runs savers on the main process only by default).
@functools.partial(sb_checkpoint_hooks, save_on_main_only=False)
class RandomState:
    """The random generators' state as a checkpoint recoverable (torch, CUDA, NumPy, Python).

    With it, a run resumed from a mid-epoch checkpoint draws the same dropout and
    SpecAugment masks as the uninterrupted run, and so ends with the same weights.
    In a distributed run every process saves and restores its own generators (their
    draws differ: each process sees other data), the CUDA generator of its own device
    included. A process without a file of its own (a checkpoint of fewer processes)
    starts from rank 0's, with a warning.

    Example
    -------
    >>> import tempfile, torch
    >>> state, path = RandomState(), tempfile.mktemp()
    >>> state._save(path)
    >>> a = torch.rand(2)
    >>> state._recover(path)
    >>> torch.equal(torch.rand(2), a)
    True
    """

    @sb_saver
    def _save(self, path):
        import random

        import numpy as np
        import torch

        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                 "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()  # the current device's
        target = rank_file(path, _rank())
        tmp = target.with_name(target.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, target)

    @sb_loader
    def _recover(self, path, end_of_epoch=False):
        import random

        import numpy as np
        import torch

        rank = _rank()
        mine = rank_file(path, rank)
        if not mine.is_file():
            logger.warning("%s: no random state of rank %d (saved by fewer processes); "
                           "rank 0's is used", mine.parent, rank)
            mine = Path(path)
        state = torch.load(mine, weights_only=False)  # our own file: NumPy/Python tuples
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            cuda = state["cuda"]
            if isinstance(cuda, (list, tuple)):  # saved by an older version: every device
                cuda = cuda[torch.cuda.current_device()]
            torch.cuda.set_rng_state(cuda)


@functools.partial(sb_checkpoint_hooks, save_on_main_only=False)
class TrainStageState:
    """The training stage's running sums as a checkpoint recoverable.

    The loss terms summed so far in the epoch (this process's) and the fault counts
    (:class:`~cald_speech.distill.faults.FaultGuard`), so that a run resumed from a
    mid-epoch checkpoint ends the epoch with the log line an uninterrupted run writes.
    Every process saves its own file, as :class:`RandomState` does. Restored values
    wait in ``brain.resume_stage`` until the training stage starts
    (:meth:`~cald_speech.distill.stages.StageRecords.on_stage_start`).

    Arguments
    ---------
    brain : cald_speech.distill.brain.DistillBrain
        The Brain whose ``train_stage_state()`` is saved.
    """

    def __init__(self, brain):
        self.brain = brain

    @sb_saver
    def _save(self, path):
        import torch

        target = rank_file(path, _rank())
        tmp = target.with_name(target.name + ".tmp")
        torch.save(self.brain.train_stage_state(), tmp)
        os.replace(tmp, target)

    @sb_loader
    def _recover(self, path, end_of_epoch=False):
        import torch

        mine = rank_file(path, _rank())
        if not mine.is_file():
            mine = Path(path)
        state = torch.load(mine, weights_only=True)
        if end_of_epoch:  # a new epoch starts from zero sums; run totals carry on
            state = {**state, "terms": {}, "items": 0, "bad_items": 0}
        self.brain.resume_stage = state
