"""Data of the intent task: audio datasets with label ids, and the preparation report."""

import json
import logging
import os

import speechbrain as sb
import torch

from cald_speech.data.pipeline import audio_dataset
from cald_speech.tasks.intent.labels import LABEL_COLUMNS, count_unknown

logger = logging.getLogger(__name__)


def intent_dataset(csv_path, labels, sorting="ascending", max_duration=None, min_duration=0.0):
    """A SLURP manifest as a dataset with ``sig``, ``ok``, labels and ``label_ids``.

    Returns
    -------
    dataset : DynamicItemDataset
        Outputs ``id, sig, ok, duration, intent, scenario, action, label_ids``.
    report : dict
        :func:`~cald_speech.data.pipeline.audio_dataset`'s report plus ``unknown``
        (:func:`count_unknown` over the kept items).
    """
    ds, report = audio_dataset(
        csv_path, required=LABEL_COLUMNS, sorting=sorting,
        max_duration=max_duration, min_duration=min_duration,
    )

    @sb.utils.data_pipeline.takes(*LABEL_COLUMNS)
    @sb.utils.data_pipeline.provides("label_ids")
    def label_pipeline(*values):
        return torch.LongTensor([labels.index(t, v) for t, v in zip(LABEL_COLUMNS, values)])

    ds.add_dynamic_item(label_pipeline)
    ds.set_output_keys(["id", "sig", "ok", "wav", "duration", *LABEL_COLUMNS, "label_ids"])
    report["unknown"] = count_unknown((ds.data[i] for i in ds.data_ids), labels)
    return ds, report


def read_prep_report(manifest_folder, splits):
    """Skipped recordings per split, as recorded by the SLURP preparation."""
    from cald_speech.data.slurp import STATE_FILE

    path = os.path.join(manifest_folder, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f).get("splits", {})
    except (OSError, ValueError):
        return {}
    return {s: dict(state.get(s, {}).get("summary", {}).get("skipped", {})) for s in splits}
