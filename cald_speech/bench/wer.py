"""WER and CER of the teacher and the student on the same test items, and their agreement.

``cald-bench wer --teacher DIR --student DIR --csv test.csv`` transcribes every item of a
SpeechBrain CSV manifest (``ID, duration, wav, ..., wrd``) with both packaged models,
scores both against the references with jiwer (corpus-level word and character error
rates, with substitution / deletion / insertion counts), scores the student against
the teacher's transcripts (agreement), prints a table and writes

- ``wer.json``: the summary (both models, agreement, items, failed files, machine);
- ``wer_utterances.csv`` and ``wer_utterances.json``: per utterance the reference,
  both hypotheses and their error counts, and the student-vs-teacher word differences.

Texts are compared upper-cased with whitespace collapsed (the form ``cald-prepare``
writes); ``--normalize`` applies the project's text normaliser to the references first
(numbers, abbreviations, punctuation), for manifests holding raw text.

Example
-------
>>> scores = error_rates(["A CAT SAT", "HI"], ["A CAT SAT", "HA"])
>>> round(scores["wer"], 3), scores["substitutions"], round(scores["cer"], 3)
(0.25, 1, 0.091)
"""

import csv
import sys
import time
from pathlib import Path

from cald_speech.bench.options import wer_parser as build_parser
from cald_speech.bench.report import (
    format_table,
    machine_info,
    write_json,
)
from cald_speech.cli import EXIT_FAILED, EXIT_OK, fail, parse
from cald_speech.data import metrics
from cald_speech.data.manifest import resolve_audio
from cald_speech.decoding import decoding_kwargs
from cald_speech.errors import AudioError, CaldError, ConfigError, DataError
from cald_speech.hub import resolve_model_source

__all__ = ["error_rates", "evaluate", "main", "norm_text", "read_items", "word_diff"]


def norm_text(text):
    """Upper case, whitespace collapsed.

    Example
    -------
    >>> norm_text("  it's  a cat ")
    "IT'S A CAT"
    """
    return " ".join(str(text).upper().split())


def error_rates(refs, hyps):
    """Corpus-level WER and CER with the word error counts (:mod:`cald_speech.data.metrics`).

    Arguments
    ---------
    refs, hyps : list of str
        References and hypotheses, already normalised.

    Returns
    -------
    dict
        ``wer``, ``cer``, ``substitutions``, ``deletions``, ``insertions``, ``hits``,
        ``ref_words``, ``items``, and ``word_errors``, ``char_errors``, ``ref_chars``,
        ``empty_references`` (rates ``None`` with no item).
    """
    return metrics.error_rates(refs, hyps)


def utterance_errors(ref, hyp):
    """Word errors (S + D + I) of one utterance and the number of reference words.

    An empty reference gives the hypothesis words as errors and 0 reference words.

    Example
    -------
    >>> utterance_errors("A B C", "A X C D")
    (2, 3)
    >>> utterance_errors("", "UM ER")
    (2, 0)
    """
    u = metrics.utterance_scores([ref], [hyp])[0]
    return u["word_errors"], u["ref_words"]


def word_diff(ref, hyp):
    """The differing words of two texts (jiwer's alignment), one token per word error.

    ``ref->hyp`` is a substitution, ``-ref`` a deletion and ``+hyp`` an insertion: the
    tokens are exactly the errors :func:`utterance_errors` counts.

    Example
    -------
    >>> word_diff("A B C D", "A X C")
    'B->X -D'
    >>> word_diff("C C", "A C")
    'C->A'
    """
    out = []
    for op, r, h in metrics.word_alignment(ref, hyp):
        if op == "substitute":
            out.append(f"{r}->{h}")
        elif op == "delete":
            out.append("-" + r)
        elif op == "insert":
            out.append("+" + h)
    return " ".join(out)


def read_items(csv_path, text_column="wrd", data_root=None, limit=None, normalize=False):
    """Reads ``(ID, audio path, reference)`` items from a SpeechBrain CSV manifest.

    Arguments
    ---------
    csv_path : str
        Manifest with ``ID``, ``duration``, ``wav`` and ``text_column``.
    text_column : str
        Transcript column.
    data_root : str, optional
        Replaces ``$data_root`` in the ``wav`` column (default: the CSV's folder).
    limit : int, optional
        Keep the first ``limit`` rows.
    normalize : bool
        Apply :func:`cald_speech.data.text.normalize_text` to the references.

    Returns
    -------
    list of dict
        ``{"ID", "wav", "ref", "duration"}``.
    """
    from cald_speech.data.manifest import read_manifest

    rows = read_manifest(csv_path, required=("ID", "duration", "wav", text_column))
    if limit:
        rows = rows[: int(limit)]
    normalizer = None
    if normalize:
        from cald_speech.data.text import normalize_text as normalizer
    items = []
    for row in rows:
        ref = row[text_column]
        if normalizer is not None:
            ref = normalizer(ref)
        items.append({"ID": row["ID"], "wav": resolve_audio(row["wav"], csv_path, data_root),
                      "ref": norm_text(ref), "duration": float(row["duration"])})
    return items


def transcribe_items(asr, items, batch_size=8, mode="auto"):
    """Transcripts (normalised) of ``items`` by a Transcriber, failed ones as errors.

    Returns
    -------
    hyps : dict
        ``ID -> text`` of the items that could be read.
    failed : dict
        ``ID -> error message``.
    seconds : float
        Wall time.
    """
    t0 = time.perf_counter()
    results = asr.transcribe_batch([it["wav"] for it in items], batch_size=batch_size,
                                   mode=mode, timestamps=False, errors="return")
    seconds = time.perf_counter() - t0
    hyps, failed = {}, {}
    for it, res in zip(items, results):
        if isinstance(res, AudioError):
            failed[it["ID"]] = str(res)
        else:
            hyps[it["ID"]] = norm_text(res.text)
    return hyps, failed, seconds


def evaluate(teacher, student, items, batch_size=8, mode="auto"):
    """Scores two Transcribers on the same items.

    Arguments
    ---------
    teacher, student : cald_speech.inference.Transcriber
        The two models.
    items : list of dict
        From :func:`read_items`.
    batch_size : int
        Inputs per padded batch.
    mode : str
        Transcriber mode for both.

    Returns
    -------
    summary : dict
        ``teacher``, ``student`` (error rates + ``seconds``), ``agreement`` (student vs
        teacher transcripts: ``wer``, ``cer``, ``identical`` fraction), ``items``,
        ``failed`` (ID -> error).
    utterances : list of dict
        Per item: ``ID``, ``ref``, ``teacher``, ``student``, error counts, ``diff``.
    """
    hyp_t, failed_t, sec_t = transcribe_items(teacher, items, batch_size, mode)
    hyp_s, failed_s, sec_s = transcribe_items(student, items, batch_size, mode)
    failed = {**failed_t, **failed_s}
    kept = [it for it in items if it["ID"] in hyp_t and it["ID"] in hyp_s]
    refs = [it["ref"] for it in kept]
    t_hyps = [hyp_t[it["ID"]] for it in kept]
    s_hyps = [hyp_s[it["ID"]] for it in kept]
    audio_s = sum(it["duration"] for it in kept)
    summary = {
        "teacher": dict(error_rates(refs, t_hyps), seconds=sec_t,
                        rtf=sec_t / audio_s if audio_s else None),
        "student": dict(error_rates(refs, s_hyps), seconds=sec_s,
                        rtf=sec_s / audio_s if audio_s else None),
        "agreement": dict(error_rates(t_hyps, s_hyps),
                          identical=(sum(a == b for a, b in zip(t_hyps, s_hyps)) / len(kept)
                                     if kept else None)),
        "items": len(kept),
        "audio_s": audio_s,
        "failed": failed,
    }
    utterances = []
    for it, th, sh in zip(kept, t_hyps, s_hyps):
        te, n = utterance_errors(it["ref"], th)
        se, _ = utterance_errors(it["ref"], sh)
        ae, _ = utterance_errors(th, sh)
        utterances.append({"ID": it["ID"], "ref_words": n, "teacher_errors": te,
                           "student_errors": se, "disagreements": ae, "ref": it["ref"],
                           "teacher": th, "student": sh, "diff": word_diff(th, sh)})
    return summary, utterances


def percent(x):
    """A fraction as a percentage (``None`` stays ``None``).

    Example
    -------
    >>> percent(0.125), percent(None)
    (12.5, None)
    """
    return None if x is None else 100.0 * x


def table(summary):
    """The summary as a text table."""
    rows = []
    for name, key in (("teacher", "teacher"), ("student", "student"),
                      ("agreement with teacher", "agreement")):
        r = summary[key]
        rows.append(dict(name=name, wer=percent(r["wer"]), cer=percent(r["cer"]),
                         sub=r["substitutions"], dele=r["deletions"], ins=r["insertions"],
                         words=r["ref_words"], seconds=r.get("seconds"), rtf=r.get("rtf")))
    cols = [("name", "", "s"), ("wer", "WER %", ".2f"), ("cer", "CER %", ".2f"),
            ("sub", "sub", "d"), ("dele", "del", "d"), ("ins", "ins", "d"),
            ("words", "ref words", "d"), ("seconds", "time s", ".1f"), ("rtf", "RTF", ".3f")]
    text = format_table(rows, cols)
    text += ("\nagreement with teacher: the student's transcripts scored against the "
             "teacher's (WER/CER %, 0: the same words)")
    ident = summary["agreement"]["identical"]
    text += f"\n{summary['items']} items"
    if ident is not None:
        text += (f"; identical teacher and student transcripts: {100 * ident:.1f} % of the "
                 "items")
    if summary["failed"]:
        text += f"; {len(summary['failed'])} unreadable item(s) left out"
    return text


def write_utterances(utterances, out_dir):
    """Writes ``wer_utterances.csv`` and ``.json``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "wer_utterances.csv"
    fields = ["ID", "ref_words", "teacher_errors", "student_errors", "disagreements", "ref",
              "teacher", "student", "diff"]
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(utterances)
    json_path = write_json(out_dir / "wer_utterances.json", utterances)
    return str(csv_path), json_path


def tune_decoder(asr, dev_items, mode="auto"):
    """Sets ``asr``'s LM weight and word bonus to the dev-best of a small grid
    (:func:`cald_speech.bench.decoding.tune_lm`); returns the tuning record."""
    from cald_speech.bench.decoding import posteriors, tune_lm
    from cald_speech.decoding import BeamDecoder

    lps, _, _ = posteriors(asr, dev_items, mode)
    d = asr.decoder
    best, grid = tune_lm(asr, dev_items, lps, d.lm, d.beam_size, engine=d.engine)
    asr.decoder = BeamDecoder(asr.tokenizer, d.beam_size, d.lm, best["lm_weight"],
                              best["word_bonus"], engine=d.engine)
    return {"dev_items": len(lps), "best": best, "grid": grid}


def main(argv=None):
    """Entry point of ``cald-bench wer``; returns the exit status (:mod:`cald_speech.cli`)."""
    args, status = parse(build_parser(), argv)
    return status if args is None else command(args)


def command(args):
    """``cald-bench wer`` on parsed arguments (:func:`build_parser`)."""
    from cald_speech.inference import Transcriber

    try:
        teacher_dir = resolve_model_source(args.teacher, "teacher")
        student_dir = resolve_model_source(args.student, "student")
        items = read_items(args.csv, args.text_column, args.data_root, args.limit,
                           args.normalize)
        decoding = decoding_kwargs(args)
        if args.tune_lm and (args.lm is None or args.dev_csv is None):
            raise ConfigError("--tune-lm needs --lm, --beam-size and --dev-csv (the weights "
                              "are chosen on dev, never on the test items)")
        kw = dict(device=args.device, window_s=args.window_s, overlap_s=args.overlap_s,
                  **decoding)
        teacher = Transcriber.from_pretrained(teacher_dir, precision=args.precision, **kw)
        student = Transcriber.from_pretrained(
            student_dir, precision=args.student_precision or args.precision, **kw)
        tuned = {}
        if args.tune_lm:
            dev = read_items(args.dev_csv, args.text_column, args.data_root, args.limit,
                             args.normalize)
            tuned = {name: tune_decoder(asr, dev, args.mode)
                     for name, asr in (("teacher", teacher), ("student", student))}
        summary, utterances = evaluate(teacher, student, items, args.batch_size, args.mode)
        summary["decoding"] = {"teacher": (teacher.decoder.settings() if teacher.decoder
                                           else {"decoder": "greedy"}),
                               "student": (student.decoder.settings() if student.decoder
                                           else {"decoder": "greedy"}),
                               "tuning": tuned}
    except CaldError as exc:
        return fail("cald-bench wer", exc)
    for item_id, msg in summary["failed"].items():
        print(f"cald-bench wer: skipped {item_id}: {msg}", file=sys.stderr)
    if not summary["items"]:
        return fail("cald-bench wer", DataError(args.csv, "no readable item"))
    print(table(summary))
    summary.update(csv=str(args.csv), teacher_dir=str(args.teacher),
                   student_dir=str(args.student), machine=machine_info(),
                   options={k: v for k, v in vars(args).items()})
    out = Path(args.output_dir)
    paths = write_utterances(utterances, out)
    print(f"wrote {write_json(out / 'wer.json', summary)}, {paths[0]}, {paths[1]}")
    return EXIT_FAILED if summary["failed"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
