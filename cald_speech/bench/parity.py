"""Updates to parity: how long must a student train to come within 5 % of its teacher?

Reads the runs of ``python -m cald_speech.demo --scale parity`` (one results folder per
seed, each with ``runs/teacher`` and ``runs/<student>_<k>x``: the student trained for
``k`` times the teacher's updates, each budget a run of its own) and writes, per
student and budget:

- the test CER of each seed, their mean, and the gap to the teacher of the same seed
  (relative, pooled over seeds: ``(sum student CER - sum teacher CER) / sum teacher
  CER``);
- a paired bootstrap of student minus teacher CER over the test utterances, the seeds
  paired run by run (:func:`cald_speech.bench.compare.compare`);
- per student, the first budget within the threshold (default 5 %) and, where the gap
  crosses it between two budgets, the update count at which it does (interpolated
  linearly in log2 of the updates).

``parity.json`` (the table, the runs, the machine), ``parity.md`` and ``parity.png``
(test CER against updates, the teacher's CER and the threshold as lines)::

    python -m cald_speech.bench.parity results/parity/seed1 results/parity/seed2 \\
        --output-dir docs/results

Example
-------
>>> budget_of("hybrid_random_init_4x")
('hybrid_random_init', 4)
>>> crossing([(228, 12.0), (456, 6.0), (912, 2.0)], threshold=5.0)
(912, 542)
"""

import argparse
import math
import re
import sys
from pathlib import Path

from cald_speech.bench.compare import compare
from cald_speech.bench.runs import summarize_run
from cald_speech.cli import EXIT_OK, add_version, fail, parse
from cald_speech.errors import CaldError, DataError

_BUDGET = re.compile(r"^(?P<student>.+)_(?P<k>\d+(?:\.\d+)?)x$")


def budget_of(name):
    """``(student, k)`` of a run named ``<student>_<k>x``; ``None`` for other names."""
    m = _BUDGET.match(name)
    if m is None:
        return None
    k = float(m.group("k"))
    return m.group("student"), int(k) if k.is_integer() else k


def crossing(points, threshold=5.0):
    """Where a student's gap to the teacher first falls to ``threshold`` %.

    Arguments
    ---------
    points : list of (updates, gap %)
        The student's budgets in increasing order and its relative CER gap at each.
    threshold : float
        The parity threshold (relative gap, %).

    Returns
    -------
    tuple
        ``(first budget within the threshold, interpolated update count)``: the
        interpolation is linear in log2(updates) between the last budget outside and
        the first inside; it equals the first budget when the smallest one is already
        within. ``(None, None)`` when no budget is.
    """
    prev = None
    for updates, gap in points:
        if gap is not None and gap <= threshold:
            if prev is None or prev[1] is None:
                return updates, updates
            (u0, g0), (u1, g1) = prev, (updates, gap)
            t = (g0 - threshold) / (g0 - g1)
            x = math.log2(u0) + t * (math.log2(u1) - math.log2(u0))
            return updates, round(2 ** x)
        prev = (updates, gap)
    return None, None


def _cer(run, split):
    return (run["splits"].get(split) or {}).get("CER")


def collect(results, split="test-clean"):
    """The teacher and student runs of each results folder.

    Returns
    -------
    tuple
        ``(teachers, students)``: ``teachers`` a list (one per folder) of run
        summaries, ``students`` ``{student: {k: [summary per folder]}}``; a run not
        finished in some folder (no result of ``split``) is left out of that budget.
    """
    teachers, students = [], {}
    for folder in results:
        runs = Path(folder) / "runs"
        teacher = summarize_run(runs / "teacher", "teacher")
        if _cer(teacher, split) is None:
            raise DataError(runs / "teacher", f"has no {split} result (wer_{split}.json)",
                            "run the parity scale's teacher first: python -m "
                            "cald_speech.demo --scale parity --stages ...,teacher")
        teachers.append(teacher)
        for run_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
            parsed = budget_of(run_dir.name)
            if parsed is None:
                continue
            summary = summarize_run(run_dir)
            if _cer(summary, split) is None:
                continue
            summary["teacher"] = teacher
            students.setdefault(parsed[0], {}).setdefault(parsed[1], []).append(summary)
    return teachers, students


def parity_table(teachers, students, split="test-clean", threshold=5.0, resamples=10000):
    """Rows (one per student and budget) and the parity point of each student."""
    rows, parity = [], {}
    for student in sorted(students):
        points = []
        for k in sorted(students[student]):
            runs = students[student][k]
            mine = [r["teacher"] for r in runs]
            s_cer = [_cer(r, split) for r in runs]
            t_cer = [_cer(t, split) for t in mine]
            gap = 100.0 * (sum(s_cer) - sum(t_cer)) / sum(t_cer)
            boot = compare([r["folder"] for r in runs], [t["folder"] for t in mine],
                           split=split, resamples=resamples)["CER"]
            updates = runs[0]["updates"]
            rows.append(dict(student=student, budget=f"{k}x", updates=updates,
                             seeds=len(runs), cer=s_cer,
                             cer_mean=sum(s_cer) / len(s_cer),
                             teacher_cer_mean=sum(t_cer) / len(t_cer), gap=gap,
                             diff=boot["a_minus_b"], ci95=boot["ci95"],
                             student_better=boot["a_better"]))
            points.append((updates, gap))
        first, at = crossing(points, threshold)
        parity[student] = dict(first_budget=first, updates=at,
                               teacher_updates=teachers[0]["updates"])
    return rows, parity


def markdown(rows, parity, threshold=5.0):
    """The table and the parity points as Markdown."""
    out = ["| student | budget | updates | seeds | test CER % (per seed) | mean | teacher "
           "| gap % | student - teacher, 95 % interval |", "|---" * 9 + "|"]
    for r in rows:
        out.append(f"| {r['student']} | {r['budget']} | {r['updates']} | {r['seeds']} | "
                   + " / ".join(f"{c:.2f}" for c in r["cer"])
                   + f" | {r['cer_mean']:.2f} | {r['teacher_cer_mean']:.2f} | "
                   f"{r['gap']:+.1f} | {r['diff']:+.2f} [{r['ci95'][0]:+.2f}, "
                   f"{r['ci95'][1]:+.2f}] |")
    out += ["", f"Updates to come within {threshold:g} % of the teacher's CER:", ""]
    for student, p in parity.items():
        if p["updates"] is None:
            last = [r for r in rows if r["student"] == student][-1]
            out.append(f"- {student}: not within {threshold:g} % by {last['budget']} "
                       f"({last['updates']} updates: {last['gap']:+.1f} %)")
        else:
            ratio = p["updates"] / p["teacher_updates"]
            out.append(f"- {student}: ~{p['updates']} updates ({ratio:.1f}x the "
                       f"teacher's {p['teacher_updates']}); first budget within: "
                       f"{p['first_budget']}")
    return "\n".join(out) + "\n"


def plot(rows, teachers, path, split="test-clean", threshold=5.0):
    """Test CER against updates per student (mean over seeds, seeds as dots; a point
    with fewer seeds than the teachers is labelled with its count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    t_cer = sum(_cer(t, split) for t in teachers) / len(teachers)
    for i, student in enumerate(dict.fromkeys(r["student"] for r in rows)):
        mine = [r for r in rows if r["student"] == student]
        color = f"C{i}"
        ax.plot([r["updates"] for r in mine], [r["cer_mean"] for r in mine], marker="o",
                color=color, label=student)
        for r in mine:
            ax.scatter([r["updates"]] * len(r["cer"]), r["cer"], s=10, color=color, alpha=0.5)
            if r["seeds"] < len(teachers):  # a budget not run on every seed says so
                ax.annotate(f"{r['seeds']} of {len(teachers)} seeds", (r["updates"], r["cer_mean"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.axhline(t_cer, color="k", lw=1, label=f"teacher ({teachers[0]['updates']} updates)")
    ax.axhline(t_cer * (1 + threshold / 100), color="k", lw=1, ls="--",
               label=f"teacher + {threshold:g} %")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("student updates")
    ax.set_ylabel(f"{split} CER (%)")
    ax.set_title(f"Updates to parity ({len(teachers)} seed(s))")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def build_parser():
    """The ``python -m cald_speech.bench.parity`` argument parser."""
    p = argparse.ArgumentParser(prog="python -m cald_speech.bench.parity",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", metavar="RESULTS",
                   help="results folders of the parity scale, one per seed")
    p.add_argument("--split", default="test-clean")
    p.add_argument("--threshold", type=float, default=5.0,
                   help="parity: the relative CER gap to the teacher, in %%")
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--output-dir", required=True, metavar="DIR")
    p.add_argument("--name", default="parity", help="output file stem")
    return add_version(p)


def main(argv=None):
    """Entry point; returns the exit status (:mod:`cald_speech.cli`)."""
    from cald_speech.bench.report import machine_info, write_json

    parser = build_parser()
    args, status = parse(parser, argv)
    if args is None:
        return status
    try:
        teachers, students = collect(args.results, args.split)
        if not students:
            raise CaldError(f"{', '.join(args.results)}: no finished student run named "
                            "<student>_<k>x; run python -m cald_speech.demo --scale parity")
        rows, parity = parity_table(teachers, students, args.split, args.threshold,
                                    args.resamples)
    except CaldError as exc:
        return fail(parser.prog, exc)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, parity, args.threshold)
    (out / f"{args.name}.md").write_text(md)
    write_json(out / f"{args.name}.json", {
        "split": args.split, "threshold": args.threshold, "rows": rows, "parity": parity,
        "teachers": [{k: t[k] for k in ("folder", "updates", "splits")} for t in teachers],
        "results": list(args.results), "machine": machine_info()})
    plot(rows, teachers, out / f"{args.name}.png", args.split, args.threshold)
    print(md, end="")
    print(f"wrote {out / (args.name + '.json')}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
