"""``cald-bench layers``: layer students against their teacher, from finished runs.

Reads a folder of distill-recipe runs (``<run>/model/gendistiller.json``) and probe-recipe
runs (``<probe>/model/probe.json``; the upstream each probed is recorded in its
``cald_info.json``) and tabulates, per upstream: parameters (all, and those beyond the
CNN and feature projection every layer student shares with its teacher), the layer
student's L1 and cosine similarity to the teacher's layers on the test split (true
generation), and the probe's CER/WER on that split. ``tools/gendistiller_results.sh``
writes such a folder.

Example
-------
>>> parse_args(["results/gendistiller"]).split
'test'
"""

import json
import sys
from pathlib import Path

from cald_speech.bench.options import layers_parser as build_parser
from cald_speech.bench.report import format_table, machine_info, write_json
from cald_speech.cli import EXIT_OK, fail, parse
from cald_speech.errors import CaldError, DataError
from cald_speech.features import base_model
from cald_speech.gendistiller import LayerStudent, is_layer_student, load_upstream


def parse_args(argv=None):
    """Parses the options."""
    return build_parser().parse_args(argv)


def parameter_counts(model):
    """(all parameters, those beyond the CNN and feature projection), in millions."""
    base = base_model(model)
    front = {id(p) for m in (base.feature_extractor, base.feature_projection)
             for p in m.parameters()}
    if isinstance(model, LayerStudent):
        params = list(model.parameters())
    else:  # a teacher: its encoder (a task head is not part of what is distilled)
        params = list(base.parameters())
    total = sum(p.numel() for p in params)
    return total / 1e6, sum(p.numel() for p in params if id(p) not in front) / 1e6


def _json(path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DataError(path, f"is not valid JSON ({exc})", "run the recipe again") from None


def collect(folder, split="test"):
    """One row per probed upstream (and per distill run without a probe)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "folder not found", "give the results folder of the runs")
    runs = {d.resolve(): d.name for d in sorted(folder.iterdir())
            if is_layer_student(d / "model")}
    probes = {}
    for d in sorted(folder.iterdir()):
        info = _json(d / "model" / "cald_info.json")
        if (d / "model" / "probe.json").is_file() and info and info.get("upstream"):
            probes[Path(info["upstream"]).resolve()] = (d, info)
    rows = []
    for upstream in sorted(set(probes) | {r / "model" for r in runs},
                           key=lambda u: (u.parent not in runs, str(u))):
        run = runs.get(upstream.parent) if upstream.name == "model" else None
        model = load_upstream(upstream)
        total, own = parameter_counts(model)
        row = {"upstream": run or upstream.name, "path": str(upstream),
               "params_M": total, "params_beyond_cnn_M": own}
        if isinstance(model, LayerStudent):
            row.update(architecture=model.info["architecture"],
                       time_mixer=model.info["time_mixer"],
                       target_layers=model.target_layers,
                       linear_time=model.is_linear_time())
            stats = _json(upstream.parent / f"layers_{split}.json") or {}
            row.update({k: v for k, v in stats.items() if k.startswith(("L1", "cos"))})
        else:
            row.update(architecture="teacher", time_mixer="attention")
        probe = probes.get(upstream)
        if probe is not None:
            d, info = probe
            wer = _json(d / f"wer_{split}.json") or {}
            row.update(probe=d.name, CER=wer.get("CER"), WER=wer.get("WER"),
                       probe_updates=info.get("updates"))
        rows.append(row)
    if not rows:
        raise DataError(folder, "holds no distill or probe runs",
                        "run tools/gendistiller_results.sh (or the recipes) first")
    return rows


COLUMNS = [("upstream", "upstream", "s"), ("architecture", "kind", "s"),
           ("time_mixer", "time mixing", "s"), ("params_M", "params M", ".2f"),
           ("params_beyond_cnn_M", "beyond CNN M", ".2f"), ("L1", "L1", ".3f"),
           ("cos", "cos", ".3f"), ("CER", "probe CER", ".2f"), ("WER", "probe WER", ".2f")]


def main(argv=None):
    """Entry point of ``cald-bench layers``; returns the exit status."""
    args, status = parse(build_parser(), list(sys.argv[1:] if argv is None else argv))
    return status if args is None else command(args)


def command(args):
    """``cald-bench layers`` on parsed arguments (:func:`build_parser`)."""
    try:
        rows = collect(args.folder, args.split)
    except CaldError as exc:
        return fail("cald-bench layers", exc)
    print(format_table(rows, COLUMNS))
    out = Path(args.output_dir or args.folder) / "layers.json"
    payload = {"machine": machine_info(), "split": args.split, "rows": rows}
    print(f"wrote {write_json(out, payload)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
