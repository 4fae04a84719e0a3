"""``results/demo/report.md``: what ``make demo`` measured, with plots and commands."""

import json
import shutil
import time
from pathlib import Path

from cald_speech.bench.decoding import model_label
from cald_speech.bench.report import machine_info
from cald_speech.bench.runs import (
    markdown_table,
    plot_metric_bars,
    plot_training_curves,
    results_rows,
    summarize_run,
)
from cald_speech.bench.wer import percent


def _load(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def starting_cer(folder):
    """The held-out CER recorded in a starting model's ``cald_info.json``, or ``None``.

    Example
    -------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "cald_info.json").write_text('{"results": {"devel": {"WER": 99, "CER": 48.5}}}')
    >>> starting_cer(d), starting_cer(d / "missing")
    (48.5, None)
    """
    info = _load(Path(folder) / "cald_info.json") or {}
    for scores in (info.get("results") or {}).values():
        if isinstance(scores, dict) and "CER" in scores:
            return float(scores["CER"])
    return None


def relative_gap(student, teacher):
    """Relative difference of two error rates in percent (positive: student worse).

    Example
    -------
    >>> relative_gap(11.0, 10.0)
    10.0
    >>> relative_gap(3.0, 0.0) is None
    True
    """
    if teacher is None or student is None or teacher == 0:
        return None
    return 100.0 * (student - teacher) / teacher


def wer_bench_rows(pipe):
    """Rows of the teacher-vs-student WER benchmarks (one per student)."""
    rows = []
    for name in pipe.cfg["students"]:
        s = _load(pipe.results / "bench" / f"wer_{name}" / "wer.json")
        if s is None:
            continue
        rows.append({
            "student": name,
            "teacher WER %": percent(s["teacher"]["wer"]),
            "student WER %": percent(s["student"]["wer"]),
            "teacher CER %": percent(s["teacher"]["cer"]),
            "student CER %": percent(s["student"]["cer"]),
            "agreement with teacher, WER %": percent(s["agreement"]["wer"]),
            "identical transcripts, % of items": percent(s["agreement"].get("identical")),
            "items": s["items"],
        })
    return rows


def summary_box(pipe, runs, split="test-clean"):
    """The report's opening lines: what was trained, the headline numbers, stage times.

    Example
    -------
    >>> from types import SimpleNamespace
    >>> pipe = SimpleNamespace(cfg={"main_student": "s"}, timings={"teacher": 61.0},
    ...                        results=Path("/nonexistent"))
    >>> runs = [{"name": "teacher", "updates": 40, "splits": {"test-clean": {"CER": 20.0,
    ...          "WER": 60.0}}}, {"name": "s", "updates": 40, "mode": "hybrid",
    ...          "splits": {"test-clean": {"CER": 22.0, "WER": 64.0}}}]
    >>> print("\\n".join(summary_box(pipe, runs)))
    > **Summary.** Trained: teacher (40 updates), s (hybrid, 40 updates).
    > Test CER / WER (%): teacher 20.00 / 60.00; s 22.00 / 64.00 (CER +10.0 % relative to teacher).
    > Stage times: teacher 1.0 min.
    """
    trained = ", ".join(
        f"{r['name']} ({r['mode'] + ', ' if r.get('mode') else ''}{r.get('updates')} updates)"
        for r in runs)
    lines = [f"> **Summary.** Trained: {trained or 'nothing yet'}."]
    scores = {r["name"]: r["splits"].get(split, {}) for r in runs}
    teacher = scores.get("teacher", {})
    parts = []
    for name, sc in scores.items():
        if "CER" not in sc:
            continue
        text = f"{name} {sc['CER']:.2f} / {sc.get('WER', float('nan')):.2f}"
        gap = relative_gap(sc["CER"], teacher.get("CER")) if name != "teacher" else None
        if gap is not None:
            text += f" (CER {gap:+.1f} % relative to teacher)"
        parts.append(text)
    if parts:
        lines.append("> Test CER / WER (%): " + "; ".join(parts) + ".")
    dec = _load(pipe.results / "bench" / "decoding" / "decoding.json")
    for res in (dec or {}).get("results", [])[:1]:
        rows = {r["decoding"]: r for r in res["rows"]}
        lm = next((r for k, r in rows.items() if k.endswith("+ LM")), None)
        if lm and "greedy" in rows:
            name, greedy = model_label(res["model"]), 100 * rows["greedy"]["wer"]
            lines.append(f"> {name}: test WER {greedy:.1f} % greedy, {100 * lm['wer']:.1f} % "
                         "with beam search + n-gram LM.")
    if pipe.timings:
        lines.append("> Stage times: " + ", ".join(
            f"{k} {v / 60:.1f} min" for k, v in pipe.timings.items()) + ".")
    return lines


def decoding_rows(pipe):
    """Rows of ``cald-bench decoding`` (WER/CER per model and decoding) and a note."""
    d = _load(pipe.results / "bench" / "decoding" / "decoding.json")
    if not d:
        return [], ""
    rows, chosen = [], []
    for res in d["results"]:
        name = model_label(res["model"])
        greedy = res["rows"][0]["wer"]
        for r in res["rows"]:
            rows.append({"model": name, "decoding": r["decoding"], "WER %": 100 * r["wer"],
                         "CER %": 100 * r["cer"],
                         "WER relative to greedy %": (100 * (r["wer"] - greedy) / greedy
                                                      if greedy else None),
                         "decoding s per audio minute": r["decode_s_per_audio_min"]})
        for engine, tuning in res.get("lm_tuning", {}).items():
            best = tuning["best"]
            chosen.append(f"{name} {best['lm_weight']:g} / {best['word_bonus']:g} "
                          f"({engine})")
    note = ("The same posteriors decoded three ways; the LM is a 4-gram of the built-in "
            "LJ Speech and SLURP training sentences without this corpus's dev and test "
            "sentences (`cald-lm build`). LM weight / word bonus chosen on the dev split: "
            + "; ".join(chosen) + ".")
    return rows, note


def speed_rows(pipe):
    s = _load(pipe.results / "bench" / "speed" / "speed.json")
    if s is None:
        return []
    rows = []
    for r in s["results"]:
        rows.append({"model": r["label"], "system": r["system"], "minutes": r["minutes"],
                     "time (s)": r.get("time_s"), "RTF": r.get("rtf"),
                     "peak RSS (MB)": r.get("peak_rss_mb"),
                     "status": r["status"] if r["status"] == "ok" else
                     f"{r['status']}: {r.get('reason', '')}"})
    return rows


def longform_rows(pipe):
    s = _load(pipe.results / "bench" / "longform" / "longform.json")
    if s is None:
        return [], None
    rows = []
    for r in s["results"]:
        if r["status"] != "ok":
            rows.append({"system": r["system"], "status": r["status"]})
            continue
        agree = r.get("agreement_with_teacher_windowed", {}).get("wer")
        rows.append({"system": r["system"], "WER %": percent(r["scores"]["wer"]),
                     "CER %": percent(r["scores"]["cer"]),
                     "agreement with teacher-windowed, WER %": percent(agree),
                     "time (s)": r["time_s"],
                     "RTF": r["rtf"], "peak RSS (MB)": r["peak_rss_mb"]})
    return rows, s["recording"]


def gap_statement(runs, split="test-clean"):
    """One line per student: its WER and CER against the teacher's, stated plainly.

    Example
    -------
    >>> runs = [{"name": "teacher", "splits": {"test-clean": {"WER": 10.0, "CER": 4.0}}},
    ...         {"name": "s", "splits": {"test-clean": {"WER": 10.5, "CER": 3.8}}}]
    >>> print(gap_statement(runs)[0])
    - **s**: test-clean WER 10.50 % vs 10.00 % (+5.0 % relative to teacher), CER 3.80 % ...
    """
    by_name = {r["name"]: r for r in runs}
    teacher = by_name.get("teacher", {}).get("splits", {}).get(split, {})
    lines = []
    for r in runs:
        if r["name"] == "teacher":
            continue
        parts = []
        for metric in ("WER", "CER"):
            mine, ref = r["splits"].get(split, {}).get(metric), teacher.get(metric)
            gap = relative_gap(mine, ref)
            if gap is not None:
                parts.append(f"{metric} {mine:.2f} % vs {ref:.2f} % ({gap:+.1f} % relative "
                             "to teacher)")
        if parts:
            lines.append(f"- **{r['name']}**: {split} " + ", ".join(parts))
    return lines


def write_report(pipe):
    """Writes ``<results>/report.md`` and its plots; returns the report path."""
    out = pipe.results
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    names = ["teacher", *pipe.cfg["students"]]
    runs = [summarize_run(pipe.run_folder(n), n) for n in names
            if (pipe.run_folder(n) / "model").is_dir()]
    curves = plot_training_curves(runs, plots / "training_curves.png")
    bars = plot_metric_bars(runs, plots / "wer.png")
    speed_png = out / "bench" / "speed" / "speed.png"
    if speed_png.is_file():
        shutil.copy(speed_png, plots / "speed_memory.png")
    corpus = (_load(pipe.corpus / "metadata.json") or {}).get("summary", {})
    machine = machine_info()

    md = [f"# cald-speech demo report ({pipe.scale} scale)", ""]
    md.append(f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} on {machine.get('cpu', '?')}, "
              f"{machine.get('cores', '?')} cores, {machine.get('ram_gb', 0):.0f} GB, "
              f"torch {machine.get('torch', '?')}, no GPU." if not machine.get("cuda") else
              f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} on {machine['cuda']}, "
              f"torch {machine.get('torch', '?')}.")
    md += [""] + summary_box(pipe, runs)
    md += ["", "## Data", ""]
    splits = corpus.get("splits", {})
    if splits:
        md.append(markdown_table([
            {"split": k, "utterances": v.get("utterances"), "hours": v.get("hours"),
             "voices": len(v.get("speakers", []))}
            for k, v in splits.items()
        ], floatfmt="{:.3f}"))
    if corpus.get("heldout_statement"):
        md += ["", corpus["heldout_statement"]]
    md += ["", f"Starting model: `{pipe.cfg['pretrained']}`, a small wav2vec2 trained with "
               "character CTC on other synthetic corpora (LJ Speech and SLURP sentences, the "
               "training voices only; the demo's dev and test sentences kept out). It plays "
               "the role of a pretrained checkpoint, which cannot be downloaded here; it is "
               "not self-supervised."]
    best = pipe.cfg["teacher"].get("best_metric", "WER")
    other = "CER" if best == "WER" else "WER"
    md += ["", f"## Teacher and students (recipe evaluation, best checkpoint by dev {best})",
           "", "Error rates in %. `updates`: updates trained; `best at`: the update of the "
           f"checkpoint kept (lowest dev {best}, capped at 100 %, ties broken by {other}) "
           "and evaluated; wall time spans the step log.", ""]
    md.append(markdown_table(results_rows(runs)))
    md += ["", "Each student's error rates relative to the teacher's ((student - teacher) / "
           "teacher; positive: the student makes more errors):", ""] + gap_statement(runs)
    cer = starting_cer(pipe.pretrained)
    weak = f"CER {cer:.0f} % on held-out voices" if cer is not None else "see its README"
    md += ["", f"How to read this: the offline starting model is weak ({weak}; "
               f"`{pipe.cfg['pretrained']}/README.md`), so at this scale absolute "
               "error rates stay high and words are rarely all right. Compare CERs, and "
               "the students with the teacher."]
    if bars:
        md += ["", f"![WER and CER per model]({Path(bars).relative_to(out)})"]
    if curves:
        md += ["", "Training curves: every loss term per update (log scale, smoothed); each "
               "panel's title says what the term is; a dashed line marks the update from "
               "which a hybrid student trains without the layer loss.", "",
               f"![training curves]({Path(curves).relative_to(out)})"]
    rows = wer_bench_rows(pipe)
    if rows:
        md += ["", "## cald-bench wer: the same test items through the inference API", "",
               "Error rates in %. Agreement with teacher: the student's transcripts scored "
               "against the teacher's (0: the same words), not against the references.", "",
               markdown_table(rows)]
    rows, note = decoding_rows(pipe)
    if rows:
        md += ["", "## Decoding: greedy vs beam search vs beam search + n-gram LM", "",
               note, "", markdown_table(rows)]
    rows = speed_rows(pipe)
    if rows:
        md += ["", "## Speed and memory vs audio length (this CPU)", "",
               "Random-content audio; time and peak resident memory of each system in its "
               "own process. At these small model sizes and short lengths the transformer "
               "is not yet in its quadratic regime; `cald-bench speed --shape "
               "wav2vec2-base` shows the full-size picture (README).", "",
               markdown_table(rows, floatfmt={"minutes": "{:g}", "RTF": "{:.3f}",
                                              "peak RSS (MB)": "{:.0f}"})]
        if (plots / "speed_memory.png").is_file():
            md += ["", "![time and memory vs length](plots/speed_memory.png)"]
    rows, rec = longform_rows(pipe)
    if rows:
        dur = rec.get("duration") if rec else None
        md += ["", "## Long-form transcription", "",
               (f"One recording of {dur / 60:.1f} minutes made of test utterances with known "
                "text; the teacher runs in overlapping windows, the student in one pass."
                if dur else ""), "", markdown_table(rows, floatfmt={"RTF": "{:.3f}",
                                                                 "peak RSS (MB)": "{:.0f}"})]
    md += ["", "## Commands", "", "Every stage is resumable and is skipped when its output is "
           "up to date. `make demo` ran:", "", "```"]
    md.append(f"python -m cald_speech.demo --scale {pipe.scale}   # corpus + manifests, then:")
    md += [s.printable for s in pipe.all_steps()]
    md += ["```", "", "Stage times (this invocation, s): " + ", ".join(
        f"{k} {v:.0f}" for k, v in pipe.timings.items()) + "."]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "report.json").write_text(json.dumps(
        {"runs": runs, "machine": machine, "scale": pipe.scale, "config": pipe.cfg,
         "timings": pipe.timings}, indent=2, default=str) + "\n")
    return path
