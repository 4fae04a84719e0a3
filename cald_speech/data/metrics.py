"""Word and character error rates: the one scoring engine of recipes, benchmarks and pretraining.

Every WER and CER the package reports comes from here, computed with jiwer's
Levenshtein alignments. The conventions:

- **Whitespace.** Texts are split on whitespace; runs of spaces and the ends do not
  count. Case and punctuation are left as given: the caller normalises first (the
  benchmarks upper-case, the recipes score in the case of the model's units).
- **Characters.** CER is over the characters of the words joined by single spaces
  (spaces count), as SpeechBrain's CTC recipes compute it.
- **Corpus rates.** Errors (substitutions + deletions + insertions) summed over the
  utterances, divided by the reference words (characters) summed over them.
- **Empty reference.** An utterance whose reference has no word has nothing to
  recognise: each hypothesis word (character) is an insertion, its reference adds
  nothing to the denominator, and it is counted in ``empty_references``. If no
  utterance has a reference word, the rate is 0 when nothing was hypothesised and 1
  (100 %) otherwise; with no utterance at all it is ``None``.

Example
-------
>>> scores = error_rates(["A CAT SAT", "HI"], ["A CAT SAT", "HA"])
>>> round(scores["wer"], 3), scores["substitutions"], round(scores["cer"], 3)
(0.25, 1, 0.091)
>>> error_rates(["", "A B"], ["UM", "A B"])["empty_references"]
1
>>> word_alignment("C C", "A C")
[('substitute', 'C', 'A'), ('equal', 'C', 'C')]
"""

__all__ = ["COUNTS", "error_rates", "rate", "totals", "utterance_scores", "word_alignment",
           "words"]

#: the per-utterance counts that :func:`totals` sums
COUNTS = ("word_errors", "ref_words", "substitutions", "deletions", "insertions", "hits",
          "char_errors", "ref_chars")


def words(text):
    """The words of ``text`` (split on whitespace).

    Example
    -------
    >>> words("  A  CAT ")
    ['A', 'CAT']
    """
    return str(text).split()


def _op_counts(chunks):
    """(substitutions, deletions, insertions, hits) of one utterance's jiwer alignment."""
    s = d = i = h = 0
    for c in chunks:
        if c.type == "equal":
            h += c.ref_end_idx - c.ref_start_idx
        elif c.type in ("substitute", "replace"):
            s += c.ref_end_idx - c.ref_start_idx
        elif c.type == "delete":
            d += c.ref_end_idx - c.ref_start_idx
        elif c.type == "insert":
            i += c.hyp_end_idx - c.hyp_start_idx
    return s, d, i, h


def utterance_scores(refs, hyps):
    """Per-utterance word and character error counts.

    Arguments
    ---------
    refs, hyps : list of str
        References and hypotheses, normalised alike.

    Returns
    -------
    list of dict
        Per utterance: ``ref``, ``hyp`` (whitespace collapsed), ``word_errors``,
        ``ref_words``, ``substitutions``, ``deletions``, ``insertions``, ``hits``
        (words), ``char_errors``, ``ref_chars``.

    Example
    -------
    >>> [(u["word_errors"], u["ref_words"], u["char_errors"], u["ref_chars"])
    ...  for u in utterance_scores(["THE CAT", ""], ["A CAT", "UM"])]
    [(1, 2, 3, 7), (1, 0, 2, 0)]
    """
    import jiwer

    refs, hyps = list(refs), list(hyps)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    refs = [" ".join(words(r)) for r in refs]
    hyps = [" ".join(words(h)) for h in hyps]
    out = [None] * len(refs)
    scored = [k for k, r in enumerate(refs) if r]
    if scored:  # one jiwer call for the whole list; empty references stay out of it
        w = jiwer.process_words([refs[k] for k in scored], [hyps[k] for k in scored])
        c = jiwer.process_characters([refs[k] for k in scored], [hyps[k] for k in scored])
        for k, w_chunks, c_chunks in zip(scored, w.alignments, c.alignments):
            s, d, i, h = _op_counts(w_chunks)
            cs, cd, ci, _ = _op_counts(c_chunks)
            out[k] = dict(ref=refs[k], hyp=hyps[k], word_errors=s + d + i, ref_words=s + d + h,
                          substitutions=s, deletions=d, insertions=i, hits=h,
                          char_errors=cs + cd + ci, ref_chars=len(refs[k]))
    for k, r in enumerate(refs):
        if not r:
            n = len(words(hyps[k]))
            out[k] = dict(ref="", hyp=hyps[k], word_errors=n, ref_words=0, substitutions=0,
                          deletions=0, insertions=n, hits=0, char_errors=len(hyps[k]),
                          ref_chars=0)
    return out


def rate(errors, total, items=1):
    """``errors / total`` with the conventions for no reference (see the module).

    Example
    -------
    >>> rate(3, 12), rate(0, 0), rate(2, 0), rate(0, 0, items=0)
    (0.25, 0.0, 1.0, None)
    """
    if not items:
        return None
    if total:
        return errors / total
    return 1.0 if errors else 0.0


def totals(scores):
    """Corpus rates and counts of per-utterance scores (:func:`utterance_scores`).

    Returns
    -------
    dict
        ``wer``, ``cer`` (fractions, see :func:`rate`), the sums of :data:`COUNTS`,
        ``items`` and ``empty_references``.

    Example
    -------
    >>> t = totals(utterance_scores(["A B", "C"], ["A", "C"]))
    >>> t["wer"], t["deletions"], t["items"]
    (0.3333333333333333, 1, 2)
    """
    scores = list(scores)
    out = {k: sum(int(u[k]) for u in scores) for k in COUNTS}
    out["items"] = len(scores)
    out["empty_references"] = sum(1 for u in scores if not u["ref_words"])
    out["wer"] = rate(out["word_errors"], out["ref_words"], out["items"])
    out["cer"] = rate(out["char_errors"], out["ref_chars"], out["items"])
    return out


def error_rates(refs, hyps):
    """Corpus-level WER and CER with their error counts (see the module's conventions).

    Arguments
    ---------
    refs, hyps : list of str
        References and hypotheses, normalised alike.

    Returns
    -------
    dict
        ``wer``, ``cer``, ``substitutions``, ``deletions``, ``insertions``, ``hits``,
        ``word_errors``, ``ref_words``, ``char_errors``, ``ref_chars``, ``items``,
        ``empty_references``.
    """
    return totals(utterance_scores(refs, hyps))


def word_alignment(ref, hyp):
    """jiwer's word alignment of two texts, one step per word.

    Returns
    -------
    list of (str, str or None, str or None)
        ``(op, reference word, hypothesis word)`` in order, ``op`` one of ``equal``,
        ``substitute``, ``delete`` (no hypothesis word) and ``insert`` (no reference
        word). Its substitutions, deletions and insertions are those that
        :func:`utterance_scores` counts.

    Example
    -------
    >>> word_alignment("A B C D", "A X C")
    [('equal', 'A', 'A'), ('substitute', 'B', 'X'), ('equal', 'C', 'C'), ('delete', 'D', None)]
    >>> word_alignment("", "UM")
    [('insert', None, 'UM')]
    """
    import jiwer

    r, h = words(ref), words(hyp)
    if not r:
        return [("insert", None, w) for w in h]
    out = []
    for c in jiwer.process_words(" ".join(r), " ".join(h)).alignments[0]:
        rw = r[c.ref_start_idx:c.ref_end_idx]
        hw = h[c.hyp_start_idx:c.hyp_end_idx]
        if c.type == "delete":
            out.extend(("delete", w, None) for w in rw)
        elif c.type == "insert":
            out.extend(("insert", None, w) for w in hw)
        else:
            op = "equal" if c.type == "equal" else "substitute"
            out.extend((op, a, b) for a, b in zip(rw, hw))
    return out
