"""The corpus builders: synthetic speech in the real LibriSpeech and SLURP layouts.

Sentences (LJ Speech transcripts for LibriSpeech, SLURP annotation records for SLURP)
are normalised with :func:`cald_speech.data.text.normalize_text` and spoken by the
voice identities of :mod:`cald_speech.data.voices` (espeak-ng, flite and festival, the
latter two favoured). Each utterance gets its own speaking rate and pitch; a share of
them gets additive noise (5–30 dB SNR), room reverberation and a telephone channel
(300–3400 Hz band, 8 kHz, mu-law). Audio is written as 16 kHz mono FLAC.

LibriSpeech layout (``OUT/LibriSpeech/<split>/<speaker>/<chapter>/``)::

    <speaker>-<chapter>-<utt>.flac
    <speaker>-<chapter>.trans.txt        lines "<speaker>-<chapter>-<utt> WORDS ..."

SLURP layout::

    OUT/dataset/slurp/{train,devel,test}.jsonl   records in SLURP's own schema
    OUT/slurp_real/audio-<id>-headset.flac       close-talk recording
    OUT/slurp_real/audio-<id>.flac               far-field twin (reverberant)

Evaluation is held-out-voice: the speakers (voice identities) and the sentences of the
dev and test splits never occur in the train split, and sentences of the evaluation-only
text files (``eval/text/``) never occur in train or dev (``eval_texts=True`` builds the
test split from them). ``OUT/README.md`` and ``OUT/metadata.json`` record this, the
voices of each split, the counts, the seed and the options. The same seed gives the same
audio samples whatever the number of worker processes; a re-run with the same options
does nothing, and an interrupted run resumes (finished files are kept).

Example
-------
>>> import os, tempfile
>>> out = tempfile.mkdtemp()
>>> summary = synthesize_librispeech(
...     out, n_train=2, n_dev=1, n_test=1, seed=3, engines=["flite"], progress=False)
>>> splits = summary["splits"]
>>> splits["train-clean-100"]["utterances"], splits["test-clean"]["utterances"]
(2, 1)
>>> splits["test-clean"]["speakers"][0] in splits["train-clean-100"]["speakers"]
False
>>> synthesize_librispeech(
...     out, n_train=2, n_dev=1, n_test=1, seed=3, engines=["flite"], progress=False
... )["up_to_date"]
True
>>> import shutil; shutil.rmtree(out)
"""

import json
import logging
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cald_speech.data.synth.bookkeeping import (
    FORMAT_VERSION,
    _finish,
    _prepare_root,
    _split_summary,
    _start,
    _statement,
    _write_text_atomic,
    _write_utterance_table,
)
from cald_speech.data.synth.options import (
    LIBRISPEECH_SPLITS,
    SLURP_SPLITS,
    SynthOptions,
    _resolve_voices,
    _split_voices,
    default_data_dir,
    voice_weights,
)
from cald_speech.data.synth.render import (
    _draw_aug,
    _draw_rate_pitch,
    _draw_voices,
    _load_noise,
    _render_all,
)
from cald_speech.data.synth.texts import (
    _choose_texts,
    _file_digest,
    _keep_sentence,
    _read_slurp_records,
    _read_tsv_sentences,
)
from cald_speech.data.text import normalize_text
from cald_speech.data.voices import SAMPLE_RATE
from cald_speech.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Utterances per LibriSpeech chapter.
CHAPTER_SIZE = 50


# --------------------------------------------------------------------------- #
# Shared by both builders.


def _read_eval(path, given, opts, read, what):
    """The evaluation-only texts of ``path`` and that path, or ``([], None)`` with a warning.

    A file named by the caller (``given``) or needed for ``eval_texts`` must be readable;
    the default file may be missing.
    """
    if given or opts.eval_texts or path.is_file():
        return read(path), path
    logger.warning("%s not found: no evaluation-only %s to keep out of train", path, what)
    return [], None


def _text_pool(items, held_out, opts):
    """``(payload, words)`` for each usable text, in order.

    ``items`` are ``(id, text, payload)``; a text is usable when its normalised words are
    not empty, not seen before, within the word limits of ``opts`` and neither its id nor
    its words are among the ``(id, text)`` pairs of ``held_out``.
    """
    eval_ids = {i for i, _ in held_out}
    eval_words = {normalize_text(t) for _, t in held_out}
    pool, seen = [], set()
    for ident, text, payload in items:
        words = normalize_text(text)
        if not words or words in seen or ident in eval_ids or words in eval_words:
            continue
        seen.add(words)
        if _keep_sentence(words, opts):
            pool.append((payload, words))
    return pool


def _summary(corpus, root, opts, record, split_names, eval_file):
    """The head of a builder's summary; ``splits`` is filled in by the caller."""
    return {
        "corpus": corpus,
        "root": str(root),
        "seed": opts.seed,
        "options": record,
        "heldout_statement": _statement(split_names, eval_file, opts.eval_texts),
        "splits": {},
    }


def _check_counts(counts, n_jobs):
    for split, n in counts.items():
        if n == "all" and split == next(iter(counts)):   # the train split: every sentence left
            continue
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"number of utterances for {split!r} must be an integer >= 0, "
                              f"got {n!r}")
    if all(n == 0 for n in counts.values()):
        raise ConfigError("nothing to synthesize: every split has 0 utterances")
    if not isinstance(n_jobs, int) or n_jobs < 1:
        raise ConfigError(f"jobs={n_jobs!r} must be an integer >= 1")


# --------------------------------------------------------------------------- #
# LibriSpeech.


def synthesize_librispeech(
    root,
    n_train=800,
    n_dev=100,
    n_test=100,
    *,
    jobs=1,
    text_file=None,
    eval_text_file=None,
    noise_dir=None,
    data_dir=None,
    split_names=LIBRISPEECH_SPLITS,
    overwrite=False,
    progress=True,
    **options,
):
    """Synthesizes a corpus in the real LibriSpeech layout under ``root/LibriSpeech``.

    Arguments
    ---------
    root : str
        Corpus folder; gets ``LibriSpeech/<split>/...``, ``README.md`` and
        ``metadata.json``.
    n_train, n_dev, n_test : int
        Utterances per split (each a distinct sentence); 0 leaves a split out;
        ``n_train="all"`` takes every usable sentence left after dev and test.
    jobs : int
        Worker processes (the output does not depend on it).
    text_file : str, optional
        ``ID<TAB>sentence`` lines (default: ``text/ljspeech_sentences.tsv`` of
        :func:`default_data_dir`).
    eval_text_file : str, optional
        Evaluation-only sentences, never put in train or dev (default:
        ``eval/text/lj_heldout.tsv``; a missing default file is skipped with a warning).
    noise_dir : str, optional
        Folder with ``noise*.wav`` and ``rir/rir*.wav`` (default: ``noise/``).
    data_dir : str, optional
        Folder the defaults above are taken from (default: :func:`default_data_dir`).
    split_names : (str, str, str)
        Names of the train, dev and test split folders.
    overwrite : bool
        Replace a corpus made with other options (otherwise that is an error).
    progress : bool
        Show a progress bar.
    **options
        Any field of :class:`SynthOptions` (seed, voices, engines, noise_prob, ...).

    Returns
    -------
    dict
        ``corpus``, ``root``, ``seed``, ``options``, ``heldout_statement``, ``up_to_date``
        and ``splits``: per split ``utterances``, ``hours``, ``speakers``, ``voices``,
        ``engines``.

    Raises
    ------
    ConfigError
        Bad counts or options, unknown engine or voice, too few sentences or voices,
        or a folder holding something else.
    DataError
        A missing or unreadable text file, or one without usable sentences.
    ToolError
        A missing program or festival voice (the message names the apt package).
    """
    opts = SynthOptions.from_kwargs(options)
    train, dev, test = split_names = tuple(split_names)
    if len(set(split_names)) != 3 or not all(split_names):
        raise ConfigError(f"split_names={split_names!r} must be three distinct names")
    counts = {train: n_train, dev: n_dev, test: n_test}
    _check_counts(counts, jobs)
    data = Path(data_dir) if data_dir else default_data_dir()
    text_file = Path(text_file or data / "text" / "ljspeech_sentences.tsv")
    eval_given = eval_text_file is not None
    eval_text_file = Path(eval_text_file or data / "eval" / "text" / "lj_heldout.tsv")
    noise_dir = Path(noise_dir or data / "noise")
    root = Path(root).resolve()

    sentences = _read_tsv_sentences(text_file)
    eval_sentences, eval_text_file = _read_eval(
        eval_text_file, eval_given, opts, _read_tsv_sentences, "sentences")
    voices = _resolve_voices(opts)
    record = {
        **asdict(opts),
        "counts": counts,
        "split_names": list(split_names),
        "text_file": str(text_file),
        "eval_text_file": str(eval_text_file) if eval_text_file else None,
        "text_digest": _file_digest([text_file, eval_text_file]),
        "noise_dir": str(noise_dir),
        "voice_names": [v.name for v in voices],
        "format_version": FORMAT_VERSION,
    }
    record = json.loads(json.dumps(record))
    done = _prepare_root(root, "librispeech", record, ["LibriSpeech"], overwrite)
    if done is not None:
        return done

    # Sentence pools: unique after normalisation; evaluation-only ones kept apart.
    pool = _text_pool([(sid, text, sid) for sid, text in sentences], eval_sentences, opts)
    if not pool:
        raise DataError(text_file, "holds no usable sentence (after normalisation and the "
                        f"{opts.min_words}-{opts.max_words} word limits)",
                        "use a file of 'ID<TAB>sentence' lines, or relax min/max_words")
    rng = np.random.default_rng([opts.seed, 11])
    pool = [pool[i] for i in rng.permutation(len(pool))]
    chosen = _choose_texts(
        pool, eval_sentences, (n_train, n_dev, n_test), split_names, opts, eval_rng_tag=12,
        source=text_file, eval_source=eval_text_file, unit="utterances",
    )

    voices_by_split = _split_voices(opts, voices, split_names, counts)
    need_rirs = opts.reverb_prob > 0
    noises, rirs = _load_noise(noise_dir, opts, need_rirs)
    base = root / "LibriSpeech"
    jobs_list, trans, voice_of = [], {}, {}
    for split_code, split in enumerate(split_names):
        if not counts[split]:
            continue
        split_voices = voices_by_split[split]
        probs = voice_weights(split_voices, opts.engine_weights)
        drawn = []
        for i, (sid, words) in enumerate(chosen[split]):
            urng = np.random.default_rng([opts.seed, 1, split_code, i])
            idx = _draw_voices(urng, probs, 1)[0]
            rate, shift = _draw_rate_pitch(urng, opts)
            aug = _draw_aug(urng, opts, noises, rirs)
            drawn.append((split_voices[idx], sid, words, rate, shift, aug))
        per_speaker = Counter()
        for voice, sid, words, rate, shift, aug in drawn:
            k = per_speaker[voice.speaker]
            per_speaker[voice.speaker] += 1
            chapter = voice.speaker * 100 + k // CHAPTER_SIZE + 1
            utt_id = f"{voice.speaker}-{chapter}-{k % CHAPTER_SIZE:04d}"
            folder = base / split / str(voice.speaker) / str(chapter)
            path = str(folder / f"{utt_id}.flac")
            trans.setdefault(folder / f"{voice.speaker}-{chapter}.trans.txt", []).append(
                f"{utt_id} {words}")
            voice_of[path] = voice
            jobs_list.append({"text": words.lower(), "voice": voice.name, "rate": rate,
                              "shift": shift, "outputs": [{"path": path, "aug": aug}],
                              "split": split, "sentence_id": sid})

    _start(root, "librispeech", record)
    frames = _render_all(jobs_list, jobs, noises, rirs, progress)
    for path, lines in trans.items():
        _write_text_atomic(path, "\n".join(lines) + "\n")
    _write_speakers_chapters(base, jobs_list, voice_of, frames)
    _write_utterance_table(root, jobs_list, voice_of)

    summary = _summary("librispeech", root, opts, record, split_names, eval_text_file)
    for split in split_names:
        paths = [j["outputs"][0]["path"] for j in jobs_list if j["split"] == split]
        if paths:
            summary["splits"][split] = _split_summary(paths, frames, voice_of)
    return _finish(root, "librispeech", record, summary, voices_by_split)


def _write_speakers_chapters(base, jobs_list, voice_of, frames):
    minutes, chapters = Counter(), Counter()
    split_of, chapter_info = {}, {}
    for job in jobs_list:
        path = job["outputs"][0]["path"]
        v = voice_of[path]
        chapter = int(Path(path).parent.name)
        minutes[v.speaker] += frames[path] / SAMPLE_RATE / 60.0
        chapters[chapter] += frames[path] / SAMPLE_RATE / 60.0
        split_of[v.speaker] = job["split"]
        chapter_info[chapter] = (v, job["split"])
    spk = [
        "; Synthetic speakers: one voice identity each (see README.md in the corpus root)",
        ";ID  |SEX| SUBSET           |MINUTES| NAME",
    ]
    for speaker in sorted(minutes):
        v = next(x for x in voice_of.values() if x.speaker == speaker)
        spk.append(f"{speaker:<5}| {v.sex} | {split_of[speaker]:<17}| {minutes[speaker]:5.2f} | "
                   f"{v.name}")
    chap = [";ID    |READER|MINUTES| SUBSET           | PROJ.|BOOK ID| CH. TITLE | PROJECT TITLE"]
    for chapter in sorted(chapters):
        v, split = chapter_info[chapter]
        chap.append(f"{chapter:<7}|{v.speaker:<6}| {chapters[chapter]:5.2f} | {split:<17}| "
                    f"0    | 0     | synthetic | synthetic speech ({v.name})")
    _write_text_atomic(base / "SPEAKERS.TXT", "\n".join(spk) + "\n")
    _write_text_atomic(base / "CHAPTERS.TXT", "\n".join(chap) + "\n")


# --------------------------------------------------------------------------- #
# SLURP.


def synthesize_slurp(
    root,
    n_train=1000,
    n_dev=200,
    n_test=200,
    *,
    jobs=1,
    slurp_files=None,
    eval_slurp_file=None,
    noise_dir=None,
    data_dir=None,
    recordings_per_record=1,
    far_field_prob=0.3,
    overwrite=False,
    progress=True,
    **options,
):
    """Synthesizes a corpus in the real SLURP layout.

    Writes ``root/dataset/slurp/{train,devel,test}.jsonl`` (SLURP records, their
    ``recordings`` replaced by the synthesized files) and ``root/slurp_real/`` audio:
    ``audio-<id>-headset.flac`` for every recording and, for a share
    ``far_field_prob`` of them, a far-field twin ``audio-<id>.flac`` (the same speech,
    reverberant). Headset recordings are close-talk: never reverberant (``reverb_prob``
    does not apply); noise and the telephone channel apply as configured, and far-field
    twins get their own noise draw. ``root/utterances.tsv`` gives the speaker, voice and
    augmentation of every file.

    Arguments
    ---------
    root : str
        Corpus folder.
    n_train, n_dev, n_test : int
        Records (distinct sentences) per split; 0 leaves a split out;
        ``n_train="all"`` takes every usable record left after dev and test.
    jobs : int
        Worker processes (the output does not depend on it).
    slurp_files : list of str, optional
        SLURP ``.jsonl`` annotation files the sentences come from (default:
        ``text/slurp_devel.jsonl`` and ``text/slurp_test.jsonl``).
    eval_slurp_file : str, optional
        Evaluation-only records, never in train or devel (default:
        ``eval/text/slurp_heldout.jsonl``).
    noise_dir : str, optional
        Folder with ``noise*.wav`` and ``rir/rir*.wav``.
    data_dir : str, optional
        Folder the defaults above are taken from (default: :func:`default_data_dir`).
    recordings_per_record : int
        Recordings (each by a different voice where possible) per record, 1 to 10.
    far_field_prob : float
        Share of recordings that also get a far-field twin.
    overwrite, progress : bool
        As in :func:`synthesize_librispeech`.
    **options
        Any field of :class:`SynthOptions`.

    Returns
    -------
    dict
        As :func:`synthesize_librispeech`; per split also ``records``, ``headset`` and
        ``far_field`` counts.

    Example
    -------
    >>> import json, os, tempfile
    >>> out = tempfile.mkdtemp()
    >>> s = synthesize_slurp(out, n_train=2, n_dev=0, n_test=1, seed=1, engines=["flite"],
    ...                      far_field_prob=1.0, progress=False)
    >>> s["splits"]["train"]["records"], s["splits"]["train"]["utterances"]
    (2, 4)
    >>> rec = json.loads(open(os.path.join(out, "dataset", "slurp", "test.jsonl")).readline())
    >>> [r["file"].endswith("-headset.flac") for r in rec["recordings"]]
    [True, False]
    >>> import shutil; shutil.rmtree(out)
    """
    opts = SynthOptions.from_kwargs(options)
    split_names = SLURP_SPLITS
    train, dev, test = split_names
    counts = {train: n_train, dev: n_dev, test: n_test}
    _check_counts(counts, jobs)
    if not isinstance(recordings_per_record, int) or not 1 <= recordings_per_record <= 10:
        raise ConfigError(f"recordings_per_record={recordings_per_record!r} must be 1 to 10")
    if not 0.0 <= far_field_prob <= 1.0:
        raise ConfigError(f"far_field_prob={far_field_prob!r} must lie in [0, 1]")
    data = Path(data_dir) if data_dir else default_data_dir()
    if slurp_files is None:
        slurp_files = [data / "text" / "slurp_devel.jsonl", data / "text" / "slurp_test.jsonl"]
    elif isinstance(slurp_files, (str, os.PathLike)):
        slurp_files = [slurp_files]
    slurp_files = [Path(p) for p in slurp_files]
    eval_given = eval_slurp_file is not None
    eval_slurp_file = Path(eval_slurp_file or data / "eval" / "text" / "slurp_heldout.jsonl")
    noise_dir = Path(noise_dir or data / "noise")
    root = Path(root).resolve()

    records = [rec for p in slurp_files for rec in _read_slurp_records(p)]
    eval_records, eval_slurp_file = _read_eval(
        eval_slurp_file, eval_given, opts, _read_slurp_records, "records")
    voices = _resolve_voices(opts)
    record = {
        **asdict(opts),
        "counts": counts,
        "recordings_per_record": recordings_per_record,
        "far_field_prob": far_field_prob,
        "slurp_files": [str(p) for p in slurp_files],
        "eval_slurp_file": str(eval_slurp_file) if eval_slurp_file else None,
        "text_digest": _file_digest([*slurp_files, eval_slurp_file]),
        "noise_dir": str(noise_dir),
        "voice_names": [v.name for v in voices],
        "format_version": FORMAT_VERSION,
    }
    record = json.loads(json.dumps(record))
    done = _prepare_root(root, "slurp", record, ["dataset", "slurp_real"], overwrite)
    if done is not None:
        return done

    pool = _text_pool([(r["slurp_id"], r["sentence"], r) for r in records],
                      [(r["slurp_id"], r["sentence"]) for r in eval_records], opts)
    if not pool:
        raise DataError(slurp_files[0], "holds no usable SLURP sentence",
                        "use SLURP annotation .jsonl files")
    pool = [pool[i] for i in np.random.default_rng([opts.seed, 21]).permutation(len(pool))]
    source = ", ".join(map(str, slurp_files))
    chosen = _choose_texts(
        pool, [(rec, rec["sentence"]) for rec in eval_records], (n_train, n_dev, n_test),
        split_names, opts, eval_rng_tag=22, source=source, eval_source=eval_slurp_file,
        unit="records", train_hint="more recordings_per_record gives more audio",
    )

    voices_by_split = _split_voices(opts, voices, split_names, counts)
    noises, rirs = _load_noise(noise_dir, opts, far_field_prob > 0)
    audio_dir = root / "slurp_real"
    jobs_list, jsonl, voice_of = [], {}, {}
    for split_code, split in enumerate(split_names):
        if not counts[split]:
            continue
        split_voices = voices_by_split[split]
        probs = voice_weights(split_voices, opts.engine_weights)
        out_records = []
        for i, (rec, words) in enumerate(chosen[split]):
            urng = np.random.default_rng([opts.seed, 2, split_code, i])
            picks = _draw_voices(urng, probs, recordings_per_record)
            entries = []
            for k, idx in enumerate(picks):
                voice = split_voices[idx]
                rate, shift = _draw_rate_pitch(urng, opts)
                twin = bool(urng.random() < far_field_prob)
                headset_aug = _draw_aug(urng, opts, noises, rirs, close_talk=True)
                far_aug = _draw_aug(urng, opts, noises, rirs, far_field=True)
                rec_id = 1600000000 + split_code * 10_000_000 + i * 10 + k
                outputs = [("headset", f"audio-{rec_id}-headset.flac", headset_aug)]
                if twin:
                    outputs.append(("far_field", f"audio-{rec_id}.flac", far_aug))
                for _, name, _ in outputs:
                    entries.append({"file": name, "wer": 0.0,
                                    "ent_wer": 0.0 if rec.get("entities") else None,
                                    "status": "correct"})
                    voice_of[str(audio_dir / name)] = voice
                jobs_list.append({
                    "text": words.lower(), "voice": voice.name, "rate": rate, "shift": shift,
                    "outputs": [{"path": str(audio_dir / name), "aug": aug}
                                for _, name, aug in outputs],
                    "split": split, "sentence_id": rec["slurp_id"],
                })
            out_records.append({**rec, "recordings": entries})
        jsonl[split] = out_records

    _start(root, "slurp", record)
    frames = _render_all(jobs_list, jobs, noises, rirs, progress)
    ann = root / "dataset" / "slurp"
    for split, recs in jsonl.items():
        _write_text_atomic(ann / f"{split}.jsonl",
                           "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    _write_utterance_table(root, jobs_list, voice_of)

    summary = _summary("slurp", root, opts, record, split_names, eval_slurp_file)
    for split in split_names:
        split_jobs = [j for j in jobs_list if j["split"] == split]
        paths = [o["path"] for j in split_jobs for o in j["outputs"]]
        if not paths:
            continue
        s = _split_summary(paths, frames, voice_of)
        s["records"] = len(jsonl[split])
        s["headset"] = sum(p.endswith("-headset.flac") for p in paths)
        s["far_field"] = len(paths) - s["headset"]
        summary["splits"][split] = s
    extra = ["Far-field files (`audio-<id>.flac`) are reverberant twins of the headset file "
             "`audio-<id>-headset.flac`: the same synthesized speech.", ""]
    return _finish(root, "slurp", record, summary, voices_by_split, extra)
