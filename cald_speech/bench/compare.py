"""Is one model better than another on the same test items? A paired bootstrap.

``cald-bench compare --a RUN ... --b RUN ...`` reads the per-utterance scores that
the CTC recipe writes at test time (``wer_<split>_utterances.jsonl``: reference,
hypothesis, word and character errors and reference lengths, computed by
:mod:`cald_speech.data.metrics`, the engine of the recipe's own WER and CER), and
compares the two sides utterance by utterance. Runs older than that file are read from
their ``wer_<split>.txt`` (SpeechBrain's ``ErrorRateStats`` alignments), rescored by the
same engine. It reports:

- the corpus WER and CER of each side, and their difference A - B;
- a 95 % interval of that difference and the share of resamples in which A has fewer
  errors, from a **paired bootstrap**: the test utterances are drawn with replacement,
  the same draw for both sides, and the corpus rates recomputed (``--resamples``,
  seeded);
- for runs of the intent recipe (``intent_<split>_items.jsonl``, or the older
  ``intent_<split>.txt``, intent only), the same for intent, scenario and action
  accuracy and their mean (CALD's SLURP metric), each item an error or not
  (``--split test``);
- several runs per side (``--a`` and ``--b`` in the same order, e.g. one per training
  seed) are paired run by run and pooled: utterance ``u`` of A's *i*-th run is paired
  with ``u`` of B's *i*-th run. The bootstrap then covers which test items were drawn;
  the seeds themselves are only as many as given.

Example
-------
>>> diff = paired_bootstrap([3, 1, 2], [4, 2, 2], [10, 10, 10], resamples=200)
>>> round(diff["a_minus_b"], 4), diff["a_better"] >= 0.5
(-0.0667, True)
"""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from cald_speech.bench.options import compare_parser as build_parser
from cald_speech.bench.report import format_table, machine_info, write_json
from cald_speech.cli import fail, parse
from cald_speech.data.metrics import utterance_scores
from cald_speech.errors import CaldError

_HEADER = re.compile(r"^(\S+), %WER ")
EPS = "<eps>"
#: per-utterance counts compared, in the order of :func:`utterance_counts`' columns
COLUMNS = ("word_errors", "ref_words", "char_errors", "ref_chars")
#: intent recipe labels compared, as accuracies
INTENT_TASKS = ("intent", "scenario", "action")
_INTENT_ROW = re.compile(r"^(\S+) (\S+) (\S+)(  \*)?$")


def read_alignments(path):
    """``{utterance id: (reference, hypothesis)}`` from an ``ErrorRateStats`` file.

    The file is what ``ErrorRateStats.write_stats`` writes (the recipe's
    ``wer_<split>.txt``): per utterance a ``ID, %WER ...`` line, then the reference,
    the edit operations and the hypothesis, tokens separated by ``;``, ``<eps>`` where
    a side has no word.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.utils.metric_stats import ErrorRateStats
    >>> stats = ErrorRateStats()
    >>> stats.append(["u1"], [["A", "CAT"]], [["THE", "CAT"]])
    >>> p = os.path.join(tempfile.mkdtemp(), "wer_test.txt")
    >>> with open(p, "w") as f:
    ...     stats.write_stats(f)
    >>> read_alignments(p)
    {'u1': ('THE CAT', 'A CAT')}
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out = {}
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        if not m or i + 3 >= len(lines):
            continue
        ref, hyp = (
            " ".join(t for t in (tok.strip() for tok in lines[j].split(";")) if t and t != EPS)
            for j in (i + 1, i + 3)
        )
        out[m.group(1)] = (ref, hyp)
    return out


def utterance_counts(pairs):
    """Per-utterance word errors, reference words, character errors, reference characters.

    Arguments
    ---------
    pairs : list of (str, str)
        (reference, hypothesis) per utterance.

    Returns
    -------
    numpy.ndarray
        (n, 4) integers.

    Example
    -------
    >>> utterance_counts([("THE CAT", "A CAT")]).tolist()
    [[1, 2, 3, 7]]
    """
    pairs = list(pairs)
    scores = utterance_scores([r for r, _ in pairs], [h for _, h in pairs])
    return _rows(scores)


def _rows(scores):
    return np.asarray([[u[k] for k in COLUMNS] for u in scores], dtype=np.int64).reshape(-1, 4)


def paired_bootstrap(err_a, err_b, total, resamples=10000, seed=0):
    """Corpus error-rate difference A - B with a paired bootstrap over utterances.

    Arguments
    ---------
    err_a, err_b : sequence of int
        Errors of each side per utterance.
    total : sequence of int
        Reference length (words or characters) per utterance.
    resamples : int
        Bootstrap draws.
    seed : int
        Seed of the draws.

    Returns
    -------
    dict
        ``a``, ``b`` (corpus rates), ``a_minus_b``, ``ci95`` (2.5 and 97.5 percentiles
        of the difference), ``a_better`` / ``b_better`` (share of draws in which that
        side has the lower rate), ``utterances``, ``resamples``.
    """
    err_a, err_b = np.asarray(err_a, float), np.asarray(err_b, float)
    total = np.asarray(total, float)
    n = len(total)
    if n == 0 or total.sum() == 0:
        raise CaldError("nothing to compare: no utterances with a reference")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    tot = np.maximum(total[idx].sum(1), 1.0)
    diff = (err_a[idx].sum(1) - err_b[idx].sum(1)) / tot
    a, b = err_a.sum() / total.sum(), err_b.sum() / total.sum()
    return dict(a=float(a), b=float(b), a_minus_b=float(a - b),
                ci95=[float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))],
                a_better=float((diff < 0).mean()), b_better=float((diff > 0).mean()),
                utterances=n, resamples=resamples)


def read_scores(run, split):
    """``{utterance id: scores}`` of ``run``'s test split ``split``.

    From ``wer_<split>_utterances.jsonl`` (what the recipe writes: one JSON object per
    utterance with ``ID``, ``ref``, ``hyp`` and the :data:`COLUMNS`), else from an older
    run's ``wer_<split>.txt``, rescored by :func:`cald_speech.data.metrics.utterance_scores`.
    The scores hold ``ref`` and the :data:`COLUMNS`.

    Example
    -------
    >>> import tempfile
    >>> run = tempfile.mkdtemp()
    >>> u = dict(ID="u1", ref="THE CAT", hyp="A CAT", word_errors=1, ref_words=2,
    ...          char_errors=3, ref_chars=7)
    >>> with open(os.path.join(run, "wer_test_utterances.jsonl"), "w") as f:
    ...     json.dump(u, f)
    >>> read_scores(run, "test")["u1"]["char_errors"]
    3
    """
    path = Path(run) / f"wer_{split}_utterances.jsonl"
    if path.is_file():
        out = {}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                u = json.loads(line)
                out[str(u["ID"])] = {k: u[k] for k in ("ref", *COLUMNS)}
            except (ValueError, KeyError, TypeError) as exc:
                raise CaldError(f"{path}, line {n}: not a per-utterance score of the CTC "
                                f"recipe ({type(exc).__name__}: {exc}); rerun its test "
                                "stage") from exc
        return out
    text = Path(run) / f"wer_{split}.txt"
    if not text.is_file():
        raise CaldError(
            f"{path} (or {text.name}): no per-utterance results of split '{split}'. Pass "
            f"the output_folder of a finished CTC recipe run, or the split it was tested "
            f"on (--split)."
        )
    pairs = read_alignments(text)
    scores = utterance_scores([r for r, _ in pairs.values()], [h for _, h in pairs.values()])
    return dict(zip(pairs, scores))


def read_intent_items(run, split):
    """``{item id: errors}`` of an intent recipe run's split: per task of
    :data:`INTENT_TASKS` 1 (wrong or unreadable) or 0, and ``ref`` (the reference intent).

    From ``intent_<split>_items.jsonl``, else from an older run's ``intent_<split>.txt``
    (intent only). ``None`` when the run has neither.

    Example
    -------
    >>> import tempfile
    >>> run = tempfile.mkdtemp()
    >>> ref = {"intent": "alarm_set", "scenario": "alarm", "action": "set"}
    >>> hyp = {"intent": "alarm_query", "scenario": "alarm", "action": "query"}
    >>> with open(os.path.join(run, "intent_test_items.jsonl"), "w") as f:
    ...     _ = f.write(json.dumps({"ID": "a", "ref": ref, "hyp": hyp}) + "\\n")
    >>> read_intent_items(run, "test")["a"]
    {'ref': 'alarm_set', 'intent': 1, 'scenario': 0, 'action': 1}
    """
    path = Path(run) / f"intent_{split}_items.jsonl"
    out = {}
    if path.is_file():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                u = json.loads(line)
                ref, hyp = u["ref"], u["hyp"]
                out[str(u["ID"])] = {"ref": ref["intent"], **{
                    t: int(hyp is None or hyp[t] != ref[t]) for t in INTENT_TASKS}}
            except (ValueError, KeyError, TypeError) as exc:
                raise CaldError(f"{path}, line {n}: not an item of the intent recipe "
                                f"({type(exc).__name__}: {exc}); rerun its test stage") from exc
        return out
    text = Path(run) / f"intent_{split}.txt"
    if not text.is_file():
        return None
    lines = text.read_text(encoding="utf-8").splitlines()
    start = lines.index("ID reference_intent predicted_intent") + 1 if (
        "ID reference_intent predicted_intent" in lines) else len(lines)
    for line in lines[start:]:
        m = _INTENT_ROW.match(line)
        if m:
            out[m.group(1)] = {"ref": m.group(2), "intent": int(m.group(2) != m.group(3))}
    return out


def _found_splits(run):
    names = [p.name for p in Path(run).glob("*_*") if p.is_file()]
    found = {re.sub(r"^wer_|_utterances\.jsonl$|\.txt$", "", n) for n in names
             if n.startswith("wer_") and n.endswith(("_utterances.jsonl", ".txt"))}
    found |= {re.sub(r"^intent_|_items\.jsonl$|\.txt$", "", n) for n in names
              if n.startswith("intent_") and n.endswith(("_items.jsonl", ".txt"))
              and "_confusions" not in n}
    return sorted(found)


def _read_run(run, split):
    """(``"ctc"`` or ``"intent"``, per-item scores) of one run's split."""
    if (Path(run) / f"wer_{split}_utterances.jsonl").is_file() or (
            Path(run) / f"wer_{split}.txt").is_file():
        return "ctc", read_scores(run, split)
    items = read_intent_items(run, split)
    if items is not None:
        return "intent", items
    found = _found_splits(run)
    raise CaldError(
        f"{run}: no per-utterance results of split '{split}' (wer_{split}_utterances.jsonl "
        f"or intent_{split}_items.jsonl). Pass the output_folder of a finished recipe run"
        + (f", and one of its splits with --split: {', '.join(found)}" if found else "")
        + "."
    )


def _intent_rows(items, tasks):
    return np.asarray([[u[t] for t in tasks] for u in items], dtype=np.int64).reshape(
        -1, len(tasks))


def compare(runs_a, runs_b, split="test-clean", resamples=10000, seed=0):
    """Paired comparison of runs ``runs_a`` and ``runs_b`` (paired in order) on ``split``.

    Returns
    -------
    dict
        ``metrics`` (their names) and per metric a :func:`paired_bootstrap` result in
        %: ``WER`` and ``CER`` for CTC runs; for intent runs the accuracies
        ``intent_acc``, and where every item has them ``scenario_acc``, ``action_acc``
        and ``sa_acc`` (their mean), with ``a_minus_b`` and ``ci95`` of the accuracy
        (``a_better``: the share of draws in which A is right more often). Plus
        ``task``, the runs, the split and the number of items found on one side only.
    """
    if len(runs_a) != len(runs_b) or not runs_a:
        raise CaldError(f"--a and --b need the same number of runs (got {len(runs_a)} "
                        f"and {len(runs_b)}): the i-th of each are paired")
    read = {str(r): _read_run(r, split) for r in (*runs_a, *runs_b)}
    kinds = {k for k, _ in read.values()}
    if len(kinds) > 1:
        raise CaldError("the runs mix CTC and intent recipe runs: compare runs of one task")
    kind = kinds.pop()
    pairs, unmatched = [], 0
    for ra, rb in zip(runs_a, runs_b):
        ua, ub = read[str(ra)][1], read[str(rb)][1]
        common = sorted(set(ua) & set(ub))
        mismatch = [u for u in common if ua[u]["ref"] != ub[u]["ref"]]
        if mismatch:
            raise CaldError(f"{ra} and {rb}: utterance {mismatch[0]} has different "
                            "references; were they tested on the same manifest?")
        unmatched += len(set(ua) ^ set(ub))
        pairs.append(([ua[u] for u in common], [ub[u] for u in common]))
    if not any(x for x, _ in pairs):
        raise CaldError(f"the runs have no {split} items in common: were they tested on the "
                        "same manifest?")
    out = dict(task=kind, split=split, runs_a=[str(r) for r in runs_a],
               runs_b=[str(r) for r in runs_b], unmatched=unmatched)
    if kind == "ctc":
        a = np.concatenate([_rows(x) for x, _ in pairs])
        b = np.concatenate([_rows(y) for _, y in pairs])
        out["metrics"] = ["WER", "CER"]
        for name, (err, ref) in (("WER", (0, 1)), ("CER", (2, 3))):
            out[name] = _percent(paired_bootstrap(a[:, err], b[:, err], a[:, ref],
                                                  resamples, seed))
        return out
    items = [u for x, y in pairs for u in (*x, *y)]
    tasks = [t for t in INTENT_TASKS if items and all(t in u for u in items)]
    a = np.concatenate([_intent_rows(x, tasks) for x, _ in pairs]).astype(float)
    b = np.concatenate([_intent_rows(y, tasks) for _, y in pairs]).astype(float)
    columns = {f"{t}_acc": (a[:, i], b[:, i]) for i, t in enumerate(tasks)}
    if "scenario" in tasks and "action" in tasks:  # the mean of two accuracies, per item
        i, j = tasks.index("scenario"), tasks.index("action")
        columns["sa_acc"] = ((a[:, i] + a[:, j]) / 2, (b[:, i] + b[:, j]) / 2)
    out["metrics"] = list(columns)
    for name, (ea, eb) in columns.items():
        out[name] = _accuracy(paired_bootstrap(ea, eb, np.ones(len(ea)), resamples, seed))
    return out


def _percent(res):
    for key in ("a", "b", "a_minus_b"):
        res[key] *= 100
    res["ci95"] = [100 * v for v in res["ci95"]]
    return res


def _accuracy(res):
    """A bootstrap of error rates as one of accuracies (in %): 1 - rate, the difference
    and its interval negated; ``a_better`` (fewer errors) is unchanged."""
    res = _percent(res)
    res["a"], res["b"] = 100 - res["a"], 100 - res["b"]
    res["a_minus_b"] = -res["a_minus_b"]
    res["ci95"] = [-res["ci95"][1], -res["ci95"][0]]
    return res


def table(summary):
    """The comparison as a plain-text table (rates and accuracies in %)."""
    rows = []
    for metric in summary.get("metrics", ("WER", "CER")):
        r = summary[metric]
        rows.append(dict(metric=metric, a=r["a"], b=r["b"], diff=r["a_minus_b"],
                         ci=f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]",
                         a_better=100 * r["a_better"]))
    cols = [("metric", "metric", "s"), ("a", "A %", ".2f"), ("b", "B %", ".2f"),
            ("diff", "A-B", "+.2f"), ("ci", "95% interval", "s"),
            ("a_better", "A better in % of draws", ".1f")]
    return format_table(rows, cols)


def main(argv=None):
    """Entry point of ``cald-bench compare``; returns the exit status."""
    args, status = parse(build_parser(), argv)
    return status if args is None else command(args)


def command(args):
    """``cald-bench compare`` on parsed arguments (:func:`build_parser`)."""
    try:
        summary = compare(args.a, args.b, args.split, args.resamples, args.seed)
    except CaldError as exc:
        return fail("cald-bench compare", exc)
    print(f"A: {', '.join(summary['runs_a'])}\nB: {', '.join(summary['runs_b'])}")
    n = summary[summary["metrics"][0]]["utterances"]
    print(f"{args.split}: {n} paired utterances, {args.resamples} bootstrap draws "
          f"(seed {args.seed})")
    if summary["unmatched"]:
        print(f"warning: {summary['unmatched']} utterances were found on one side only "
              "and left out", file=sys.stderr)
    print(table(summary))
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        path = write_json(os.path.join(args.output_dir, "compare.json"),
                          dict(summary, machine=machine_info()))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
