"""Intent labels: scenario/action/intent maps built from the train split, unknown labels.

Example
-------
>>> labels = LabelMaps({"alarm_set": ("alarm", "set"), "play_music": ("play", "music")})
>>> labels.parts["alarm_set"]
('alarm', 'set')
"""

import logging
from collections import Counter

from cald_speech.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


#: Version of the files an intent model is saved in.
FORMAT_VERSION = 1

#: Head layouts: the tasks each one classifies, in the order of the logits.
HEADS = {"intent": ("intent",), "scenario_action": ("scenario", "action")}


#: Pooling of the encoder's frames.
POOLINGS = ("mean", "attentive")


#: Label columns of the SLURP manifests, in the order of ``label_ids``.
LABEL_COLUMNS = ("intent", "scenario", "action")


#: Metrics a checkpoint can be kept by.
BEST_METRICS = ("sa_acc", "intent_acc")


class LabelMaps:
    """The label sets of the intent task: intents and the scenario/action of each.

    Arguments
    ---------
    parts : dict
        ``{intent: (scenario, action)}``. Labels are kept sorted, so equal label sets
        give equal indices.

    Example
    -------
    >>> labels = LabelMaps.from_rows([
    ...     {"intent": "alarm_set", "scenario": "alarm", "action": "set"},
    ...     {"intent": "alarm_query", "scenario": "alarm", "action": "query"}])
    >>> labels.labels("action"), labels.index("intent", "alarm_set")
    (['query', 'set'], 1)
    >>> labels.index("scenario", "weather")
    -1
    >>> LabelMaps.from_dict(labels.to_dict()) == labels
    True
    """

    def __init__(self, parts):
        self.parts = {str(k): (str(v[0]), str(v[1])) for k, v in sorted(dict(parts).items())}
        if not self.parts:
            raise ConfigError("the label maps need at least one intent")
        self._labels = {
            "intent": list(self.parts),
            "scenario": sorted({s for s, _ in self.parts.values()}),
            "action": sorted({a for _, a in self.parts.values()}),
        }
        self._index = {t: {x: i for i, x in enumerate(v)} for t, v in self._labels.items()}
        self._intent_of = {v: k for k, v in self.parts.items()}

    @classmethod
    def from_rows(cls, rows, source="train"):
        """Builds the maps from manifest rows with ``intent``, ``scenario``, ``action``.

        Raises
        ------
        DataError
            When one intent comes with two different (scenario, action) pairs.
        """
        parts = {}
        for row in rows:
            pair = (row["scenario"], row["action"])
            if parts.setdefault(row["intent"], pair) != pair:
                raise DataError(
                    source,
                    f"intent '{row['intent']}' appears as {parts[row['intent']]} and {pair}",
                    "the intent must be '<scenario>_<action>'; re-run the data preparation",
                )
        if not parts:
            raise DataError(source, "no labelled items", "check the data preparation step")
        return cls(parts)

    def labels(self, task):
        """Sorted labels of ``task`` (``intent``, ``scenario`` or ``action``)."""
        return list(self._labels[task])

    def num_labels(self, task):
        """Number of labels of ``task``."""
        return len(self._labels[task])

    def index(self, task, label):
        """Index of ``label`` in ``task``'s labels; -1 when train never had it."""
        return self._index[task].get(label, -1)

    def intent_of(self, scenario, action):
        """The intent of a (scenario, action) pair (``<scenario>_<action>`` if unseen)."""
        return self._intent_of.get((scenario, action), f"{scenario}_{action}")

    def to_dict(self):
        """A JSON-serialisable copy."""
        return {"format_version": FORMAT_VERSION,
                "intents": {k: list(v) for k, v in self.parts.items()}}

    @classmethod
    def from_dict(cls, d):
        """Rebuilds maps written by :meth:`to_dict`."""
        return cls({k: tuple(v) for k, v in d["intents"].items()})

    def __eq__(self, other):
        return isinstance(other, LabelMaps) and self.parts == other.parts

    def __repr__(self):
        n = {t: len(v) for t, v in self._labels.items()}
        return f"LabelMaps({n['intent']} intents, {n['scenario']} scenarios, {n['action']} actions)"


def count_unknown(rows, labels):
    """Counts the items whose labels the label maps do not know.

    Arguments
    ---------
    rows : iterable of dict
        Manifest rows with ``intent``, ``scenario`` and ``action``.
    labels : LabelMaps
        The maps (from train).

    Returns
    -------
    dict
        ``items`` (rows with any unknown label), per task the number of rows with an
        unknown label of that task, and ``labels``: the unknown labels per task.

    Example
    -------
    >>> labels = LabelMaps({"alarm_set": ("alarm", "set")})
    >>> r = count_unknown([{"intent": "alarm_stop", "scenario": "alarm", "action": "stop"}],
    ...                   labels)
    >>> r["items"], r["intent"], r["scenario"], r["labels"]["action"]
    (1, 1, 0, ['stop'])
    """
    counts = Counter()
    unknown = {t: set() for t in LABEL_COLUMNS}
    for row in rows:
        bad = [t for t in LABEL_COLUMNS if labels.index(t, row[t]) < 0]
        for t in bad:
            counts[t] += 1
            unknown[t].add(row[t])
        counts["items"] += bool(bad)
    return {"items": counts["items"], **{t: counts[t] for t in LABEL_COLUMNS},
            "labels": {t: sorted(v) for t, v in unknown.items()}}
