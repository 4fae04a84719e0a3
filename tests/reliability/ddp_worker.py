"""One process of a two-process (gloo) training run, for the DDP reliability tests.

Run under ``python -m torch.distributed.run --nproc_per_node=2 ddp_worker.py SCENARIO
FOLDER``; ``FOLDER/train.csv`` is the corpus. Each process trains a tiny CTC model with
the distillation Brain and writes ``FOLDER/rank<R>.json``: updates made, steps skipped,
the error it stopped with (type and message) and a digest of its weights.

Scenarios (``SCENARIO[:option]``):

- ``clean``: plain fine-tuning;
- ``nan_loss``: the loss of rank 1's second batch is NaN;
- ``nan_always``: every loss of rank 1 is NaN (the run must stop);
- ``huge``: nothing forced (the corpus holds an item that overflows the forward pass);
- ``bad_items``: fine-tuning on a corpus with unreadable files on one rank;
- ``spec_off``: target guidance, SpecAugment on, ``spec_augment_layer_loss: off``;
- ``dropout:K``: dropout and time masking on, a checkpoint after every update; with
  ``K`` > 0 the process stops dead (``os._exit``) right after the checkpoint of update
  ``K``, as a killed job would; started again, it resumes.
"""

import gc
import hashlib
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import speechbrain as sb
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from cald_speech.data.pipeline import add_ctc_targets, audio_dataset
from cald_speech.data.tokenizer import CharTokenizer
from cald_speech.distill.checkpoints import AtomicCheckpointer
from cald_speech.distill.guidance import Guidance
from cald_speech.tasks.asr.brain import CTCBrain


def tiny_ctc(seed=0, noise=False):
    torch.manual_seed(seed)
    np.random.seed(seed)  # transformers draws time masks from NumPy's generator
    random.seed(seed)
    p = 0.2 if noise else 0.0
    cfg = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, vocab_size=29,
        feat_extract_norm="layer", do_stable_layer_norm=True, pad_token_id=0,
        hidden_dropout=p, attention_dropout=0.0, activation_dropout=p,
        feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
        mask_time_prob=0.3 if noise else 0.0, mask_time_length=2,
    )
    return Wav2Vec2ForCTC(cfg)


def digest(model):
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(scenario, folder):
    folder = Path(folder)
    name, _, option = scenario.partition(":")
    rank = int(os.environ["RANK"])
    sb.utils.distributed.ddp_init_group({"distributed_backend": "gloo"})
    noise = name in ("dropout", "spec_off")
    model = tiny_ctc(0, noise=noise)
    teacher, guidance = None, None
    hp = {}
    if name == "spec_off":
        teacher, guidance = tiny_ctc(1), Guidance("target")
        hp.update(spec_augment_layer_loss="off", find_unused_parameters=False)
    epochs = 3 if name in ("dropout", "nan_always") else 2
    counter = sb.utils.epoch_loop.EpochCounter(limit=epochs)
    tok = CharTokenizer()
    hparams = {
        "encoder_opt_class": lambda p: torch.optim.AdamW(p, lr=1e-3),
        "head_opt_class": lambda p: torch.optim.AdamW(p, lr=1e-3),
        "tokenizer": tok, "guidance": guidance, "feature_cache": None,
        "step_log": str(folder / "steps.jsonl"), "log_every": 1,
        "max_nonfinite_steps": 2, "max_bad_fraction": 0.2,
        "sorting": "ascending",  # as the recipes pass it: SpeechBrain's DDP sampler keeps
                                 # the order (rank r takes items r, r + 2, ...)
        "bad_items_file": str(folder / "bad_items.tsv"), **hp,
    }
    ckpt = AtomicCheckpointer(folder / "save", recoverables={"model": model,
                                                              "counter": counter})
    run_opts = {"device": "cpu", "distributed_backend": "gloo"}
    if name == "dropout":
        run_opts.update(ckpt_interval_steps=1, ckpt_interval_minutes=0)
    brain = CTCBrain(modules={"model": model}, hparams=hparams, teacher=teacher,
                     run_opts=run_opts, checkpointer=ckpt)
    if name.startswith("nan"):
        orig = brain.compute_objectives
        calls = [0]

        def objectives(predictions, batch, stage):
            loss = orig(predictions, batch, stage)
            if stage == sb.Stage.TRAIN and rank == 1:
                calls[0] += 1
                if name == "nan_always" or calls[0] == 2:
                    return loss * float("nan")
            return loss

        brain.compute_objectives = objectives
    if name == "dropout" and int(option or 0) > 0:
        save = brain._save_intra_epoch_ckpt

        def save_then_die():
            save()
            if brain.optimizer_step == int(option):
                os._exit(3)  # as SIGKILL: no clean-up, no process group teardown

        brain._save_intra_epoch_ckpt = save_then_die
    ds, _ = audio_dataset(str(folder / "train.csv"), required=("wrd",), sorting="ascending")
    add_ctc_targets(ds, tok)
    result = {"rank": rank}
    try:
        # A loader of its own generator, as the recipes pass (making its iterator again
        # after a resume must not draw from the global one).
        opts = {"batch_size": 2, "generator": torch.Generator().manual_seed(0)}
        brain.fit(counter, ds, train_loader_kwargs=opts, progressbar=False)
    except Exception as exc:  # reported, then the process fails as it would
        result["error"] = [type(exc).__name__, str(exc)]
    result.update(updates=brain.optimizer_step, skipped=brain.faults.nonfinite_total,
                  weights=digest(model))
    (folder / f"rank{rank}.json").write_text(json.dumps(result))
    if torch.distributed.is_initialized():
        # As the recipes leave: the DDP wrappers (kept alive by reference cycles) freed
        # while the process group exists, every rank there, then the group torn down;
        # torn down after it, gloo may abort the process at exit.
        del brain
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
