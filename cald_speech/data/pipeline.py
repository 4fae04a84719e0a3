"""SpeechBrain data pipelines shared by the recipes: CSV manifest → batches.

Every row's audio header is checked once when a dataset is built: unreadable, empty
or missing files are skipped, counted and reported with their paths instead of
stopping a run hours later. A file that still fails when it is read (truncated in the
middle, say) yields a short silence with ``ok=False``; the Brains mask such items out
of every loss and count them.

Example
-------
>>> import tempfile, os, numpy as np, soundfile as sf
>>> d = tempfile.mkdtemp()
>>> sf.write(os.path.join(d, "a.flac"), np.random.randn(8000).astype("float32") * .1, 16000)
>>> open(os.path.join(d, "bad.flac"), "wb").close()
>>> with open(os.path.join(d, "x.csv"), "w") as f:
...     _ = f.write("ID,duration,wav,spk_id,wrd\\n")
...     _ = f.write(f"a,0.5,{d}/a.flac,1,HELLO\\n")
...     _ = f.write(f"b,0.5,{d}/bad.flac,1,WORLD\\n")
>>> ds, report = audio_dataset(os.path.join(d, "x.csv"), required=("wrd",))
>>> len(ds), report["skipped"]
(1, 1)
>>> item = ds[0]
>>> item["sig"].shape, item["ok"]
(torch.Size([8000]), True)
"""

import logging

import speechbrain as sb
import torch

from cald_speech.data.audio import SAMPLE_RATE, audio_info, load_audio
from cald_speech.data.manifest import read_manifest
from cald_speech.errors import AudioError, DataError

logger = logging.getLogger(__name__)

#: Length of the stand-in silence for audio that fails at read time.
_FALLBACK_SAMPLES = SAMPLE_RATE // 10


def audio_dataset(csv_path, required=(), sorting="ascending", max_duration=None,
                  min_duration=0.0):
    """A DynamicItemDataset with ``id``, ``sig`` (16 kHz mono), ``ok`` and ``duration``.

    Arguments
    ---------
    csv_path : str
        Manifest CSV.
    required : sequence of str
        Columns the task needs (they are passed through as outputs too).
    sorting : str
        ``ascending``, ``descending``, ``random`` or ``none``. ``random`` and ``none``
        keep the manifest's order here; the recipes shuffle ``random`` training sets
        every epoch with :func:`epoch_sampler`.
    max_duration, min_duration : float
        Duration filter in seconds.

    Returns
    -------
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
    report : dict
        ``kept``, ``skipped`` and ``bad`` (list of (path, reason)).
    """
    rows = read_manifest(csv_path, required=("ID", "duration", "wav", *required))
    if not rows:
        raise DataError(csv_path, "manifest has no rows", "check the data preparation step")
    data, bad, filtered = {}, [], 0
    for row in rows:
        try:
            audio_info(row["wav"])
        except AudioError as exc:
            bad.append((row["wav"], exc.problem))
            continue
        dur = row["duration"]
        if dur < min_duration or (max_duration is not None and dur > max_duration):
            filtered += 1
            continue
        data[row["ID"]] = row
    for path, why in bad[:20]:
        logger.warning("skipping %s: %s", path, why)
    if bad:
        logger.warning("%s: skipped %d item(s) with unusable audio", csv_path, len(bad))
    if not data:
        raise DataError(csv_path, "no usable items left", "check the audio files it lists")
    ds = sb.dataio.dataset.DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig", "ok")
    def audio_pipeline(wav):
        try:
            sig, _ = load_audio(wav)
            yield sig
            yield True
        except AudioError as exc:
            logger.warning("could not read %s at training time: %s", wav, exc.problem)
            yield torch.zeros(_FALLBACK_SAMPLES)
            yield False

    ds.add_dynamic_item(audio_pipeline)
    if sorting in ("ascending", "descending"):
        ds = ds.filtered_sorted(sort_key="duration", reverse=sorting == "descending")
    elif sorting not in ("random", "none"):
        raise DataError(csv_path, f"unknown sorting '{sorting}'",
                        "use ascending, descending, random or none")
    ds.set_output_keys(["id", "sig", "ok", "wav", "duration", *required])
    report = {"kept": len(data), "skipped": len(bad), "filtered": filtered, "bad": bad}
    return ds, report


def add_ctc_targets(dataset, tokenizer, text_key="wrd", normalize=None):
    """Adds ``words`` (reference text) and ``tokens`` (LongTensor of unit ids).

    Arguments
    ---------
    dataset : DynamicItemDataset
        From :func:`audio_dataset`, with ``text_key`` among its columns.
    tokenizer : object
        With ``encode(text) -> list[int]``.
    text_key : str
        Column holding the transcript (``wrd`` for LibriSpeech, ``transcript`` for SLURP).
    normalize : callable, optional
        Applied to the transcript first (e.g. ``cald_speech.data.text.normalize_text``).
    """

    @sb.utils.data_pipeline.takes(text_key)
    @sb.utils.data_pipeline.provides("words", "tokens")
    def text_pipeline(text):
        words = normalize(text) if normalize is not None else " ".join(text.split())
        yield words
        yield torch.LongTensor(tokenizer.encode(words))

    dataset.add_dynamic_item(text_pipeline)
    keys = list(dataset.pipeline.output_mapping)
    dataset.set_output_keys([*keys, "words", "tokens"])
    return dataset


def epoch_sampler(dataset, seed):
    """A sampler that visits ``dataset`` in a new random order every epoch.

    The order depends only on ``seed`` and the epoch number (``set_epoch``, which
    SpeechBrain's Brain calls when the sampler is its ``train_sampler``), so a run
    resumed mid-epoch continues with the same batches.

    Example
    -------
    >>> s = epoch_sampler(list(range(6)), seed=3)
    >>> first = list(s)
    >>> sorted(first) == list(range(6)), list(s) == first
    (True, True)
    >>> s.set_epoch(1)
    >>> list(s) != first
    True
    """
    from speechbrain.dataio.sampler import ReproducibleRandomSampler

    return ReproducibleRandomSampler(dataset, seed=int(seed))


def dynamic_batching(dataset, max_batch_seconds, num_buckets=20, shuffle=True, seed=0):
    """Dataloader options batching by total duration (SpeechBrain's DynamicBatchSampler)."""
    from speechbrain.dataio.sampler import DynamicBatchSampler

    sampler = DynamicBatchSampler(
        dataset,
        max_batch_length=max_batch_seconds,
        num_buckets=num_buckets,
        length_func=lambda x: x["duration"],
        shuffle=shuffle,
        batch_ordering="random" if shuffle else "ascending",
        seed=seed,
    )
    return {"batch_sampler": sampler}
