"""Compares starting models on the same test manifests, with their learning curves.

``python -m cald_speech.bench.starting_models --model NAME=DIR ... --test NAME=CSV ...
--curve NAME=JSON ... --output-dir DIR`` decodes every test manifest with every model
(greedy CTC, the project's one WER engine), and writes ``starting_models.json`` (the
table, the curves and the machine), ``starting_models.md`` (the table) and
``starting_models.png`` (held-out CER against updates of each curve). A curve is a
``curve.json`` of ``python -m cald_speech.pretrain`` (``dev_CER`` per evaluation) or a
results JSON of the recipe's runs (``valid_curve`` with ``CER`` per epoch).

Example
-------
>>> _named(["new=data/run/model", "models/old"])
[('new', 'data/run/model'), ('old', 'models/old')]
"""

import argparse
import ast
import json
import sys
from pathlib import Path

from cald_speech.cli import EXIT_OK, add_version, fail, parse
from cald_speech.errors import CaldError, DataError


def _named(items):
    """``NAME=PATH`` (or a bare path, named by its folder) pairs."""
    out = []
    for item in items:
        name, _, path = item.rpartition("=")
        out.append((name or Path(path).name, path))
    return out


def read_curve(path):
    """``[(updates, held-out CER %)]`` of a ``curve.json`` or a recipe's results JSON.

    Example
    -------
    >>> import json, tempfile
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    >>> json.dump({"curve": [{"updates": 250, "dev_CER": 61.5}]}, f); f.close()
    >>> read_curve(f.name)
    [(250, 61.5)]
    """
    data = json.loads(Path(path).read_text())
    if "curve" in data:
        return [(int(c["updates"]), float(c["dev_CER"])) for c in data["curve"]]
    for run in data.get("runs", []):
        curve = run.get("valid_curve")
        if isinstance(curve, str):
            curve = ast.literal_eval(curve)
        if curve:
            return [(int(c["updates"]), float(c["CER"])) for c in curve]
    raise DataError(path, "holds no learning curve (curve, or runs[].valid_curve)",
                    "give the curve.json of python -m cald_speech.pretrain")


def evaluate(models, tests):
    """``{model: {test: {"CER", "WER", "items"}}}``, greedy decoding."""
    from cald_speech.bench.decoding import decode, posteriors, score
    from cald_speech.bench.wer import read_items
    from cald_speech.inference import Transcriber

    table = {}
    for name, folder in models:
        asr = Transcriber.from_pretrained(folder)
        table[name] = {}
        for test, csv in tests:
            items = read_items(csv, "wrd", None, None, True)
            lps, failed, _ = posteriors(asr, items)
            s = score(items, decode(asr, lps)[0])
            table[name][test] = {"CER": round(100 * s["cer"], 2),
                                 "WER": round(100 * s["wer"], 2), "items": len(lps),
                                 "failed": len(failed)}
    return table


def markdown(table, tests):
    """The table as Markdown: one row per model, CER / WER per test manifest."""
    head = "| model | " + " | ".join(f"{t} CER / WER" for t, _ in tests) + " |"
    rows = [head, "|---" * (len(tests) + 1) + "|"]
    for name, res in table.items():
        rows.append(f"| {name} | " + " | ".join(
            f"{res[t]['CER']:.2f} / {res[t]['WER']:.2f}" for t, _ in tests) + " |")
    return "\n".join(rows) + "\n"


def plot(curves, path):
    """Held-out CER against updates, one line per curve (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        ax.plot([u for u, _ in points], [c for _, c in points], marker="o", ms=3, label=name)
    ax.set_xlabel("updates")
    ax.set_ylabel("held-out dev CER (%)")
    ax.set_title("Starting model: learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def build_parser():
    """The ``python -m cald_speech.bench.starting_models`` argument parser."""
    p = argparse.ArgumentParser(prog="python -m cald_speech.bench.starting_models",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", required=True, metavar="[NAME=]DIR")
    p.add_argument("--test", nargs="+", required=True, metavar="[NAME=]CSV")
    p.add_argument("--curve", nargs="*", default=[], metavar="[NAME=]JSON")
    p.add_argument("--output-dir", required=True, metavar="DIR")
    return add_version(p)


def main(argv=None):
    """Entry point; returns the exit status (:mod:`cald_speech.cli`)."""
    from cald_speech.bench.report import machine_info, write_json

    parser = build_parser()
    args, status = parse(parser, argv)
    if args is None:
        return status
    try:
        tests = _named(args.test)
        curves = {name: read_curve(path) for name, path in _named(args.curve)}
        table = evaluate(_named(args.model), tests)
    except CaldError as exc:
        return fail(parser.prog, exc)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(table, tests)
    (out / "starting_models.md").write_text(md)
    write_json(out / "starting_models.json", {
        "table": table, "tests": dict(tests), "models": dict(_named(args.model)),
        "curves": curves, "machine": machine_info()})
    if curves:
        plot(curves, out / "starting_models.png")
    print(md, end="")
    print(f"wrote {out / 'starting_models.json'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
