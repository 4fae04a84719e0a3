"""How often a training step waits for the device: host syncs per step, counted on CPU.

On a GPU, reading a device tensor's value on the host (``float()``, ``bool()``,
``.item()``, ``.tolist()``, ``.numpy()``, ``.cpu()``, ``torch.equal``, ``nonzero``,
indexing with a boolean mask) waits until the device has caught up: the device then
idles while the host prepares the next work. This tool trains a tiny CALD setup (a
converted BiMamba2 student, a transformer teacher, target guidance, cached CNN features,
CTC) on CPU for a few steps and counts those reads per step with a
``TorchFunctionMode``, call site by call site. To count what would be device tensors on
a GPU, the batch's tensors are copied when it "moves to the device" (on CPU ``.to``
returns the same tensors); reads of the batch as the loader gives it (host memory) are
not counted. Step time is wall time on this CPU (median over the steps).

    .venv/bin/python tools/count_syncs.py [--steps 12] [--log-every 4] [--layers 4]
"""

import argparse
import collections
import statistics
import tempfile
import time
import traceback
import weakref
from pathlib import Path

import numpy as np
import soundfile as sf
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch, PaddedData
from torch.overrides import TorchFunctionMode
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from cald_speech.data.pipeline import add_ctc_targets, audio_dataset
from cald_speech.data.tokenizer import CharTokenizer
from cald_speech.distill.guidance import Guidance
from cald_speech.features import FeatureCache
from cald_speech.mixers import padding
from cald_speech.student import convert
from cald_speech.tasks.asr.brain import CTCBrain

READS = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "cpu",
         "equal", "nonzero", "masked_select", "unique"}
HERE = Path(__file__).resolve().parents[1]


class SyncCounter(TorchFunctionMode):
    """Records the host reads of device tensors, with their call sites.

    Host tensors are the batch as the loader gives it and whatever is computed from
    host tensors alone; everything else (parameters, the batch once moved, results of
    the model) counts as a device tensor.
    """

    def __init__(self):
        super().__init__()
        self.host = set()
        self.events = []

    def mark_host(self, tensors, host=True):
        for t in tensors:
            if host and id(t) not in self.host:
                self.host.add(id(t))
                weakref.finalize(t, self.host.discard, id(t))
            elif not host:
                self.host.discard(id(t))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        tensor = args[0] if args and torch.is_tensor(args[0]) else None
        moves = name in ("to", "cpu")  # to the host: counted when the project asks
        read = (name in READS and not moves) or (moves and _to_cpu(name, args, kwargs)
                                                  and _asked_by_project()) or (
            name == "__getitem__" and len(args) > 1 and torch.is_tensor(args[1])
            and args[1].dtype == torch.bool)
        counted = read and tensor is not None and id(tensor) not in self.host
        if counted:
            site = _site()
            if site is not None:
                self.events.append((name, f"{site} [{name}]"))
        out = func(*args, **kwargs)
        if counted and moves:
            self.mark_host(_tensors(out))  # the host copy
        inputs = _tensors((args, kwargs))
        made_here = not inputs and kwargs.get("device") is None  # a factory, on the host
        if made_here or (inputs and all(id(t) in self.host for t in inputs)):
            self.mark_host(_tensors(out))
        return out


def _tensors(obj):
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _to_cpu(name, args, kwargs):
    """``.cpu()``, or ``.to("cpu")`` spelled out (a ``torch.device`` argument is usually a
    tensor's own device: on a GPU, no copy)."""
    if name == "cpu":
        return True
    dev = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(dev, str) and dev.startswith("cpu")


def _asked_by_project():
    """The copy is asked for by the code being measured, in so many words (``.cpu()``,
    ``.to("cpu")``): not inside torch, and not ``.to(self.device)`` (on CPU here, a GPU
    on the machine this stands for)."""
    caller = traceback.extract_stack()[-3]
    return "site-packages/torch/" not in caller.filename and "cpu" in (caller.line or "")


def _site():
    stack = traceback.extract_stack()[:-2]
    if any("site-packages/torch/optim/" in f.filename for f in stack):
        return None  # an optimiser's step counters: host tensors, also on a GPU
    inner = stack[-1]
    for frame in reversed(stack):
        if "site-packages/torch/" in frame.filename or frame.filename == __file__:
            continue
        path = Path(frame.filename)
        try:
            path = path.relative_to(HERE)
        except ValueError:
            parts = path.parts
            path = Path(*parts[parts.index("site-packages") + 1:]) if "site-packages" in \
                parts else path
        where = f"{path}:{frame.lineno} ({frame.name})"
        if inner is not frame:
            where += f" <- torch {Path(inner.filename).name}:{inner.lineno}"
        return where
    return "?"


def tiny_models(layers):
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=128,
        conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 4),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, vocab_size=29,
        feat_extract_norm="layer", do_stable_layer_norm=True, pad_token_id=0,
        layerdrop=0.0, mask_time_prob=0.05, mask_time_length=2)
    teacher = Wav2Vec2ForCTC(cfg).eval()
    return teacher, convert(teacher, mixer="bimamba2")


def corpus(folder, items):
    rng = np.random.default_rng(0)
    words = ["A CAT", "THE DOG RAN", "NO", "YES I DO", "IT IS ME", "GO HOME NOW"]
    lines = ["ID,duration,wav,spk_id,wrd"]
    for i in range(items):
        n = 16000 + 1600 * (i % 8)
        path = folder / f"u{i}.flac"
        sf.write(path, (0.1 * rng.standard_normal(n)).astype("float32"), 16000)
        lines.append(f"u{i},{n / 16000},{path},1,{words[i % len(words)]}")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    return folder / "train.csv"


def measure(steps=12, batch=4, layers=4, log_every=4, folder=None):
    """Trains the tiny setup one epoch untimed (it fills the feature cache), then counts.

    Returns
    -------
    dict
        ``plain`` and ``logged``: host syncs of each step without and with a step-log
        line; ``seconds``: each step's wall time; ``sites``: {call site: count}; ``steps``.
    """
    folder = Path(folder or tempfile.mkdtemp(prefix="cald-syncs-"))
    csv = corpus(folder, steps * batch)
    teacher, student = tiny_models(layers)
    tok = CharTokenizer()
    hparams = {"encoder_opt_class": lambda ps: torch.optim.AdamW(ps, lr=1e-4),
               "head_opt_class": lambda ps: torch.optim.AdamW(ps, lr=1e-4),
               "tokenizer": tok, "guidance": Guidance("target"),
               "feature_cache": FeatureCache(folder / "cache"), "log_every": log_every,
               "step_log": str(folder / "steps.jsonl")}
    brain = CTCBrain(modules={"model": student}, hparams=hparams, teacher=teacher,
                     run_opts={"device": "cpu"})
    ds, _ = audio_dataset(str(csv), required=("wrd",), sorting="ascending")
    add_ctc_targets(ds, tok)
    counter = SyncCounter()
    marks = []
    fit_batch, to = brain.fit_batch, PaddedBatch.to
    on_host = getattr(padding, "on_host", None)

    def moved(batch, *a, **k):  # a device copy: new tensors, as on a GPU
        out = to(batch, *a, **k)
        for key in out._PaddedBatch__device_prep_keys:
            value = getattr(out, key)
            if torch.is_tensor(value):
                value = value.clone()
            elif isinstance(value, PaddedData):
                value = PaddedData(value.data.clone(), value.lengths.clone())
            counter.mark_host(_tensors(tuple(value)) if isinstance(value, tuple)
                              else [value], host=False)
            setattr(out, key, value)
        return out

    def counted(batch):
        counter.mark_host([t for v in batch.__dict__.values()
                           for t in _tensors(tuple(v) if isinstance(v, tuple) else v)])
        marks.append((len(counter.events), time.perf_counter()))
        out = fit_batch(batch)
        marks[-1] += (brain.optimizer_step,)
        return out

    brain.fit_batch = counted
    PaddedBatch.to = moved
    # The code paths a GPU takes where the project branches on the device.
    padding.on_host = lambda t: id(t) in counter.host
    try:
        brain.fit(sb.utils.epoch_loop.EpochCounter(limit=1), ds,
                  train_loader_kwargs={"batch_size": batch}, progressbar=False)
        marks.clear()
        with counter:
            brain.fit(sb.utils.epoch_loop.EpochCounter(limit=2), ds,
                      train_loader_kwargs={"batch_size": batch}, progressbar=False)
    finally:
        PaddedBatch.to = to
        if on_host is None:
            del padding.on_host
        else:
            padding.on_host = on_host
    out = {"plain": [], "logged": [], "seconds": [], "sites": collections.Counter()}
    for (e0, t0, step), (e1, t1, _) in zip(marks, marks[1:]):
        events = counter.events[e0:e1]
        out["logged" if step % log_every == 0 else "plain"].append(len(events))
        out["seconds"].append(t1 - t0)
        out["sites"].update(site for _, site in events)
    out["steps"] = len(out["seconds"])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--log-every", type=int, default=4)
    p.add_argument("--sites", type=int, default=12, help="call sites to list")
    args = p.parse_args()
    res = measure(args.steps, args.batch, args.layers, args.log_every)
    n = res["steps"]
    print(f"CPU: {torch.get_num_threads()} threads; {args.layers}-layer BiMamba2 student, "
          f"batch {args.batch}, target guidance, cached features, {n} steps timed")
    logged = statistics.median(res["logged"]) if res["logged"] else "-"
    print(f"host syncs per step: {statistics.median(res['plain']):g} "
          f"(a step that writes a step-log line, every {args.log_every}: {logged})")
    print(f"step time: {1e3 * statistics.median(res['seconds']):.0f} ms (median)")
    print(f"call sites over {n} steps:")
    for site, k in res["sites"].most_common(args.sites):
        print(f"  {k / n:6.2f}/step  {site}")


if __name__ == "__main__":
    main()
