"""Summaries of finished recipe runs: result tables and training curves.

A run folder is what ``recipes/*/train.py`` writes: ``steps.jsonl`` (every loss term,
logged per step), ``wer_<split>.json`` (or ``intent_<split>.json``) and ``model/`` with
``cald_info.json``. These helpers read them back for the README tables, the demo
report and ``cald-bench runs``:

    cald-bench runs results/LibriSpeech/ASR/*/1 --out-dir results/summary
"""

import glob
import json
import math
import os
import re
import sys
import textwrap
from pathlib import Path

from cald_speech.bench.options import runs_parser as build_parser
from cald_speech.bench.report import format_table, machine_info, write_json
from cald_speech.cli import fail, parse
from cald_speech.errors import ConfigError, DataError

#: Result files ``<prefix>_<split>.json``: the CTC recipe's ``wer_*``, the intent
#: recipe's ``intent_*`` (its ``metrics_file``) and ``acc_*``.
RESULT_PREFIXES = ("wer", "intent", "acc")

#: Keys of ``steps.jsonl`` records that are not loss terms.
NON_LOSS = ("step", "time")
#: What each logged loss term is (the training-curve panels' titles).
TERM_TITLES = {
    "task": "task: the task loss (CTC or intent cross-entropy)",
    "layer": "layer: student vs teacher hidden states",
    "kd": "kd: KL to the teacher's output distribution",
    "total": "total: task + alpha_layer * layer + alpha_logit * kd",
    "teacher_task": "teacher_task: the co-trained teacher's task loss",
}


def read_steps(path):
    """The records of a ``steps.jsonl`` file; a torn last line (killed run) is skipped.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "steps.jsonl")
    >>> _ = open(p, "w").write('{"step": 1, "task": 2.0}\\n{"step": 2, "ta')
    >>> read_steps(p)
    [{'step': 1, 'task': 2.0}]
    """
    records = []
    if not os.path.isfile(path):
        return records
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def loss_terms(records):
    """Names of the loss terms present in step records (learning rates excluded).

    Example
    -------
    >>> loss_terms([{"step": 1, "time": 0, "task": 1.0, "layer": 2.0, "lr_head": 0.1}])
    ['layer', 'task']
    """
    names = set()
    for r in records:
        names.update(k for k in r if k not in NON_LOSS and not k.startswith("lr"))
    return sorted(names)


def count_parameters(model_dir):
    """Number of parameters in a packaged model's ``*.safetensors`` (sub-folders too).

    A CTC model is one ``model.safetensors``; an intent model is ``encoder/`` plus
    ``intent_head.safetensors``. ``None`` when the folder has none.
    """
    from safetensors import safe_open

    paths = sorted(Path(model_dir).rglob("*.safetensors")) if os.path.isdir(model_dir) else []
    if not paths:
        return None
    total = 0
    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


def trained_updates(path):
    """The update count of the last epoch line of a recipe's ``train_log.txt`` (or None).

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "train_log.txt")
    >>> _ = open(p, "w").write("epoch: 1, updates: 38 - train loss: 2.4\\n"
    ...                        "epoch: 2, updates: 76 - train loss: 2.3\\n"
    ...                        "split: test, updates: 38 - test loss: 2.4\\n")
    >>> trained_updates(p)
    76
    """
    if not os.path.isfile(path):
        return None
    found = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"epoch: \d+, updates: (\d+)", line)
            if m:
                found = int(m.group(1))
    return found


def valid_curve(path):
    """Held-out metrics per epoch from a recipe's ``train_log.txt``: a list of dicts.

    Each has ``epoch``, ``updates`` and every ``valid <metric>`` of that epoch's line.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "train_log.txt")
    >>> _ = open(p, "w").write(
    ...     "epoch: 1, updates: 38 - train loss: 2.4 - valid loss: 2.1, valid CER: 80.5\\n"
    ...     "epoch: 2, updates: 76 - train loss: 2.3 - valid loss: 1.9, valid CER: 61\\n")
    >>> [(r["updates"], r["CER"]) for r in valid_curve(p)]
    [(38, 80.5), (76, 61.0)]
    """
    points = []
    if not os.path.isfile(path):
        return points
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"epoch: (\d+), updates: (\d+)", line)
            if not m:
                continue
            point = {"epoch": int(m.group(1)), "updates": int(m.group(2))}
            for key, value in re.findall(r"valid ([A-Za-z_]+): ([-+0-9.eE]+)", line):
                if key != "loss":
                    point[key] = float(value)
            points.append(point)
    return points


def plot_learning_curves(runs, path, metrics=("CER", "WER")):
    """Held-out metric vs updates, one panel per metric, one line per run (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {run["name"]: valid_curve(Path(run["folder"]) / "train_log.txt") for run in runs}
    metrics = [m for m in metrics if any(m in p for c in curves.values() for p in c)]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (name, points) in enumerate(curves.items()):
            pts = [(p["updates"], p[metric]) for p in points if metric in p]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=f"C{i % 10}", label=name)
        ax.set_title(f"held-out {metric} (%)")
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def summarize_run(folder, name=None):
    """One run's results: metrics per evaluated split, updates, wall time, parameters.

    Wall time is the span of the step log (first to last logged step), which covers
    every resumed segment of the run.
    """
    folder = Path(folder)
    out = {"name": name or folder.name, "folder": str(folder), "splits": {}}
    for path in sorted(folder.glob("*_*.json")):
        prefix, split = path.stem.split("_", 1)
        # ``valid`` is the last epoch's validation; the splits evaluated at the end
        # (with the best checkpoint) have their own names.
        if prefix in RESULT_PREFIXES and split != "valid":
            with open(path, encoding="utf-8") as f:
                out["splits"][split] = json.load(f)
    info_path = folder / "model" / "cald_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        out["mode"] = info.get("mode")
        out["best_update"] = info.get("updates")   # of the checkpoint kept (best on dev)
    steps = read_steps(folder / "steps.jsonl")
    # The step log is written every ``log_every`` updates; the epoch lines of the
    # train log have the exact count.
    out["updates"] = trained_updates(folder / "train_log.txt") or max(
        (r["step"] for r in steps if "step" in r), default=None
    )
    times = [r["time"] for r in steps if "time" in r]
    out["wall_s"] = (max(times) - min(times)) if len(times) > 1 else None
    out["parameters"] = count_parameters(folder / "model")
    out["valid_curve"] = valid_curve(folder / "train_log.txt")
    out["switch_step"] = switch_step(folder)
    return out


def switch_step(folder):
    """The update from which a hybrid run turned its layer loss off (from the run's
    ``hyperparams.yaml``); ``None`` for other modes.

    Example
    -------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "hyperparams.yaml").write_text("mode: hybrid\\nswitch_step: 40\\n")
    >>> switch_step(d)
    40
    """
    path = Path(folder) / "hyperparams.yaml"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    mode = re.search(r"^mode:\s*(\w+)", text, re.M)
    step = re.search(r"^switch_step:\s*(\d+)", text, re.M)
    if mode is None or mode.group(1) != "hybrid" or step is None:
        return None
    return int(step.group(1))


def results_rows(runs, metrics=("WER", "CER")):
    """Table rows (dicts) of run summaries: one column per metric and split."""
    rows = []
    for run in runs:
        row = {"model": run["name"]}
        for split, stats in run["splits"].items():
            for m in metrics:
                if m in stats:
                    row[f"{m} {split}"] = stats[m]
        row["updates"] = run.get("updates")
        row["best at"] = run.get("best_update")
        row["wall (min)"] = None if run.get("wall_s") is None else run["wall_s"] / 60
        row["params (M)"] = None if run.get("parameters") is None else run["parameters"] / 1e6
        rows.append(row)
    return rows


def _columns(rows):
    """Keys of row dicts in first-seen order."""
    columns = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    return columns


def markdown_table(rows, floatfmt="{:.2f}"):
    """A GitHub markdown table of row dicts (columns in first-seen order).

    ``floatfmt`` is one format for every float, or a dict column -> format (missing
    columns: ``{:.2f}``).

    Example
    -------
    >>> print(markdown_table([{"model": "teacher", "WER": 12.345}, {"model": "x"}]))
    | model | WER |
    |---|---|
    | teacher | 12.35 |
    | x | - |
    """
    columns = _columns(rows)

    def cell(v, column):
        if v is None:
            return "-"
        if isinstance(v, float):
            fmt = floatfmt.get(column, "{:.2f}") if isinstance(floatfmt, dict) else floatfmt
            return fmt.format(v)
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c), c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _smooth(values, window):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _save(fig, path):
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def training_figure(runs, smooth=5):
    """The training-curve figure (or ``None`` without step logs): one panel per loss
    term, titled with what the term is, one line per run (log scale), and a dashed line
    where a hybrid run turned its layer loss off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {run["name"]: read_steps(Path(run["folder"]) / "steps.jsonl") for run in runs}
    switches = {run["name"]: run.get("switch_step") for run in runs
                if run.get("switch_step") is not None}
    terms = sorted({t for recs in series.values() for t in loss_terms(recs)})
    if not terms:
        return None
    fig, axes = plt.subplots(1, len(terms), figsize=(4.4 * len(terms), 3.9), squeeze=False)
    colors = {name: f"C{i % 10}" for i, name in enumerate(series)}   # one colour per run
    handles = {}
    for ax, term in zip(axes[0], terms):
        for name, recs in series.items():
            pts = [(r["step"], r[term]) for r in recs if term in r and r[term] is not None]
            if pts:
                xs, ys = zip(*pts)
                handles[name], = ax.plot(xs, _smooth(list(ys), smooth), color=colors[name])
        for name, step in switches.items():
            ax.axvline(step, color=colors.get(name, "k"), ls="--", lw=1)
        ax.set_title("\n".join(textwrap.wrap(TERM_TITLES.get(term, term), 34)), fontsize=9)
        ax.set_xlabel("update")
        ax.set_ylabel(f"{term} loss per update (log scale, smoothed over {smooth})")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    names = [n for n in series if n in handles]
    labels = [n + (f" (dashed: layer loss off from update {switches[n]})"
                   if n in switches else "") for n in names]
    fig.legend([handles[n] for n in names], labels, loc="upper center", ncol=min(len(names), 3),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    return fig


def plot_training_curves(runs, path, smooth=5):
    """:func:`training_figure` saved as a PNG; returns its path (``None``: no step logs)."""
    fig = training_figure(runs, smooth)
    return None if fig is None else _save(fig, path)


def metric_figure(runs, metrics=("WER", "CER")):
    """Grouped bars per split and run, one panel per metric (``None`` without results)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    metrics = [m for m in metrics if any(m in st for r in runs for st in r["splits"].values())]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(len(metrics) * (1.6 + 1.3 * len(runs)),
                                                       3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        splits = sorted({s for r in runs for s, st in r["splits"].items() if metric in st})
        width = 0.8 / len(splits)
        for j, split in enumerate(splits):
            xs = [i + (j - (len(splits) - 1) / 2) * width for i in range(len(runs))]
            ys = [r["splits"].get(split, {}).get(metric, float("nan")) for r in runs]
            bars = ax.bar(xs, ys, width, label=split)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels([r["name"] for r in runs], rotation=15, fontsize=8)
        ax.set_ylabel(f"{metric} (%, lower is better)")
        ax.set_title(f"{metric} per model and split", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_metric_bars(runs, path, metrics=("WER", "CER")):
    """:func:`metric_figure` saved as a PNG; returns its path (``None``: no results)."""
    fig = metric_figure(runs, metrics)
    return None if fig is None else _save(fig, path)


def main(argv=None):
    """Entry point of ``cald-bench runs``; returns the exit status (:mod:`cald_speech.cli`)."""
    args, status = parse(build_parser(), argv)
    return status if args is None else command(args)


def command(args):
    """``cald-bench runs`` on parsed arguments (:func:`build_parser`)."""
    folders = [f for pattern in args.folders for f in sorted(glob.glob(pattern)) or [pattern]]
    missing = [f for f in folders if not os.path.isdir(f)]
    if missing:
        return fail("cald-bench runs", DataError(", ".join(missing), "not a run folder",
                                                 "give the output folders of recipe runs"))
    names = args.names if args.names else [
        os.path.relpath(f).replace(os.sep, "/") for f in folders
    ]
    if len(names) != len(folders):
        return fail("cald-bench runs", ConfigError("--names needs one name per folder"))
    runs = [summarize_run(f, n) for f, n in zip(folders, names)]
    rows = results_rows(runs, args.metrics)
    print(format_table(rows, [(k, k, "s" if k == "model" else ".2f") for k in _columns(rows)]))
    out = Path(args.output_dir)
    write_json(out / "runs.json", {"runs": runs, "machine": machine_info()})
    (out / "runs.md").parent.mkdir(parents=True, exist_ok=True)
    (out / "runs.md").write_text(markdown_table(rows) + "\n")
    plot_training_curves(runs, out / "training_curves.png")
    plot_learning_curves(runs, out / "learning_curves.png", args.metrics)
    plot_metric_bars(runs, out / f"{args.metrics[0].lower()}.png", args.metrics)
    print(f"wrote {out}/runs.json, runs.md and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
