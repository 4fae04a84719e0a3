"""Intent metrics: intent, scenario and action accuracy, their mean, confusions, files."""

import json
import logging
import os
from collections import Counter
from pathlib import Path

from cald_speech.tasks.intent.labels import LABEL_COLUMNS

logger = logging.getLogger(__name__)


class IntentMetrics:
    """Accuracies and confusions of an evaluation split.

    Every item counts: an item whose reference label is unknown to the label maps, or
    whose audio could not be read, is an error for that label.

    Arguments
    ---------
    labels : LabelMaps
        The model's labels (to count unknown references).

    Example
    -------
    >>> from cald_speech.tasks.intent.labels import LabelMaps
    >>> labels = LabelMaps({"alarm_set": ("alarm", "set"), "alarm_query": ("alarm", "query")})
    >>> m = IntentMetrics(labels)
    >>> ref = [{"intent": "alarm_set", "scenario": "alarm", "action": "set"},
    ...        {"intent": "alarm_stop", "scenario": "alarm", "action": "stop"}]
    >>> hyp = [ref[0], {"intent": "alarm_query", "scenario": "alarm", "action": "query"}]
    >>> m.append(["a", "b"], ref, hyp)
    >>> s = m.summarize()
    >>> s["intent_acc"], s["scenario_acc"], s["action_acc"], s["sa_acc"], s["unknown_intent"]
    (50.0, 100.0, 50.0, 75.0, 1)
    >>> m.confusions()
    [('alarm_stop', 'alarm_query', 1)]
    """

    def __init__(self, labels):
        self.labels = labels
        self.items = []

    def append(self, ids, refs, hyps):
        """Adds items: ids, reference and predicted label dicts (``None`` = unreadable)."""
        for uid, ref, hyp in zip(ids, refs, hyps):
            self.items.append((uid, dict(ref), None if hyp is None else dict(hyp)))

    def summarize(self):
        """``n``, accuracies in percent (``sa_acc``: mean of scenario and action, CALD's
        SLURP metric), unknown references per task and unreadable items."""
        n = len(self.items)
        stats = {"n": n}
        for task in LABEL_COLUMNS:
            right = sum(h is not None and h[task] == r[task] for _, r, h in self.items)
            stats[f"{task}_acc"] = 100.0 * right / n if n else 0.0
            stats[f"unknown_{task}"] = sum(
                self.labels.index(task, r[task]) < 0 for _, r, _ in self.items
            )
        stats["sa_acc"] = (stats["scenario_acc"] + stats["action_acc"]) / 2
        stats["unreadable"] = sum(h is None for _, _, h in self.items)
        return stats

    def confusions(self, top=10):
        """The most frequent (reference intent, predicted intent, count) errors."""
        pairs = Counter(
            (r["intent"], h["intent"] if h is not None else "<unreadable>")
            for _, r, h in self.items if h is None or h["intent"] != r["intent"]
        )
        ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(r, h, c) for (r, h), c in ranked[:top]]

    def write(self, path, split, extra=None, top=10):
        """Writes ``path`` (.txt: summary + per item), its .json, ``*_confusions.txt`` and
        ``*_items.jsonl`` (per item: ``ID``, reference and predicted labels, ``hyp`` null
        where the audio was unreadable)."""
        stats = {**self.summarize(), **(extra or {})}
        base = os.path.splitext(str(path))[0]
        os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
        lines = [
            f"split: {split}",
            f"items: {stats['n']} (unreadable audio: {stats['unreadable']})",
            f"intent accuracy:   {stats['intent_acc']:.2f} %",
            f"scenario accuracy: {stats['scenario_acc']:.2f} %",
            f"action accuracy:   {stats['action_acc']:.2f} %",
            f"mean of scenario and action accuracy (sa_acc): {stats['sa_acc']:.2f} %",
            "references with labels unseen in train (left out of the loss, counted as "
            f"errors): intent {stats['unknown_intent']}, scenario {stats['unknown_scenario']}, "
            f"action {stats['unknown_action']}",
            "",
            "ID reference_intent predicted_intent",
        ]
        for uid, r, h in self.items:
            hyp = h["intent"] if h is not None else "<unreadable>"
            lines.append(f"{uid} {r['intent']} {hyp}{'' if hyp == r['intent'] else '  *'}")
        Path(base + ".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        with open(base + "_items.jsonl", "w", encoding="utf-8") as f:  # cald-bench compare
            for uid, r, h in self.items:
                f.write(json.dumps({"ID": uid, "ref": r, "hyp": h}) + "\n")
        confusions = self.confusions(top)
        per_ref = Counter(r["intent"] for _, r, _ in self.items)
        conf_lines = [f"Most confused intents ({split}): reference -> predicted, count"]
        for r, h, c in confusions:
            conf_lines.append(f"{r} -> {h}  {c}  ({100.0 * c / per_ref[r]:.1f}% of {r})")
        if not confusions:
            conf_lines.append("(no errors)")
        Path(base + "_confusions.txt").write_text("\n".join(conf_lines) + "\n", encoding="utf-8")
        out = {k: (float(v) if isinstance(v, float) else v) for k, v in stats.items()}
        out["confusions"] = [list(x) for x in confusions]
        Path(base + ".json").write_text(json.dumps(out, indent=2, default=float) + "\n")
        return stats
