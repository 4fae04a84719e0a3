"""Checkpoints that survive interruption, and runs that resume exactly.

- :class:`AtomicCheckpointer` is SpeechBrain's ``Checkpointer`` except that a checkpoint
  folder appears only once every file in it is written: a process killed during a save
  (preemption, SIGKILL, out of memory) leaves the previous checkpoint as the one to
  resume from. SpeechBrain writes ``CKPT.yaml`` first and the parameter files after it,
  so a kill in between leaves a newest checkpoint that cannot be loaded.
- :class:`RandomState` checkpoints the random generators: a run resumed from a
  mid-epoch checkpoint draws the same dropout and masks as the uninterrupted run and
  ends with the same weights.

Example
-------
>>> import tempfile, torch
>>> ckpt = AtomicCheckpointer(tempfile.mkdtemp(), {"w": torch.nn.Linear(2, 2)})
>>> saved = ckpt.save_checkpoint()
>>> saved.path.name.startswith("CKPT+"), sorted(p.name for p in saved.path.iterdir())
(True, ['CKPT.yaml', 'w.ckpt'])
"""

import os
import shutil

from speechbrain.utils.checkpoints import Checkpoint, Checkpointer
from speechbrain.utils.checkpoints import mark_as_loader as sb_loader
from speechbrain.utils.checkpoints import mark_as_saver as sb_saver
from speechbrain.utils.checkpoints import register_checkpoint_hooks as sb_checkpoint_hooks
from speechbrain.utils.distributed import ddp_barrier, if_main_process

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


@sb_checkpoint_hooks
class RandomState:
    """The random generators' state as a checkpoint recoverable (torch, CUDA, NumPy, Python).

    With it, a run resumed from a mid-epoch checkpoint draws the same dropout and
    SpecAugment masks as the uninterrupted run, and so ends with the same weights.

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
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, path)

    @sb_loader
    def _recover(self, path, end_of_epoch=False):
        import random

        import numpy as np
        import torch

        state = torch.load(path, weights_only=False)  # our own file: NumPy/Python tuples
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
