"""Updates to parity: runs read back, gaps pooled over seeds, the crossing point."""

import json
import math

import pytest

from cald_speech.bench import parity
from cald_speech.data.metrics import utterance_scores

REFS = ["THE CAT SAT ON THE MAT", "A DOG BARKED", "IT IS RAINING AGAIN TODAY", "HELLO THERE"]


def _run(folder, hyps, updates):
    """A finished CTC recipe run: per-utterance scores, the split's rates, its step log."""
    folder.mkdir(parents=True)
    scores = utterance_scores(REFS, hyps)
    with open(folder / "wer_test-clean_utterances.jsonl", "w") as f:
        for i, s in enumerate(scores):
            f.write(json.dumps(dict(s, ID=f"u{i}")) + "\n")
    cer = 100 * sum(s["char_errors"] for s in scores) / sum(s["ref_chars"] for s in scores)
    wer = 100 * sum(s["word_errors"] for s in scores) / sum(s["ref_words"] for s in scores)
    (folder / "wer_test-clean.json").write_text(json.dumps({"CER": cer, "WER": wer}))
    (folder / "steps.jsonl").write_text(
        "".join(json.dumps({"step": s, "time": float(s)}) + "\n" for s in (1, updates)))
    return cer


def _seed(root, teacher_hyps, students):
    """One results folder: the teacher and ``{run name: hyps}`` students."""
    runs = root / "runs"
    cers = {"teacher": _run(runs / "teacher", teacher_hyps, 10)}
    for name, hyps in students.items():
        k = parity.budget_of(name)[1]
        cers[name] = _run(runs / name, hyps, 10 * k)
    return cers


T1 = ["THE CAT SAT ON THE MAT", "A DOG BARKED", "IT IS RAINING AGAIN", "HELLO THERE"]
T2 = ["THE CAT SAT ON THE MAP", "A DOG BARKED", "IT IS RAINING AGAIN TODAY", "HELLO"]
FAR = ["THE BAT SAD ON A MAP", "A FOG", "IT IS RAIN AGAIN", "YELLOW"]
NEAR = ["THE CAT SAT ON THE MAP", "A DOG BARKED", "IT IS RAINING AGAIN", "HELLO THERE"]


def test_crossing_is_interpolated_in_log_updates():
    assert parity.crossing([(100, 20.0), (200, 10.0), (400, 4.0)]) == (
        400, round(2 ** (math.log2(200) + (10 - 5) / (10 - 4))))
    assert parity.crossing([(100, 3.0), (200, 1.0)]) == (100, 100)
    assert parity.crossing([(100, 30.0), (200, 9.0)]) == (None, None)
    assert parity.crossing([(100, 5.0)], threshold=5.0) == (100, 100)


def test_budget_names():
    assert parity.budget_of("unguided_2x") == ("unguided", 2)
    assert parity.budget_of("hybrid_1.5x") == ("hybrid", 1.5)
    assert parity.budget_of("teacher") is None and parity.budget_of("hybrid") is None


def test_gaps_are_pooled_over_seeds_and_match_the_bootstrap(tmp_path):
    c1 = _seed(tmp_path / "s1", T1, {"hybrid_1x": FAR, "hybrid_2x": NEAR, "unguided_1x": FAR})
    c2 = _seed(tmp_path / "s2", T2, {"hybrid_1x": FAR, "hybrid_2x": T2})
    teachers, students = parity.collect([tmp_path / "s1", tmp_path / "s2"])
    assert [t["updates"] for t in teachers] == [10, 10]
    assert sorted(students) == ["hybrid", "unguided"]
    rows, points = parity.parity_table(teachers, students, threshold=10.0, resamples=300)
    by = {(r["student"], r["budget"]): r for r in rows}
    h2 = by[("hybrid", "2x")]
    assert h2["updates"] == 20 and h2["seeds"] == 2
    assert h2["cer"] == pytest.approx([c1["hybrid_2x"], c2["hybrid_2x"]])
    want = 100 * (c1["hybrid_2x"] + c2["hybrid_2x"] - c1["teacher"] - c2["teacher"]) / (
        c1["teacher"] + c2["teacher"])
    assert h2["gap"] == pytest.approx(want)
    # the bootstrap's corpus difference pools the utterances of both seeds
    assert h2["diff"] == pytest.approx((c1["hybrid_2x"] + c2["hybrid_2x"]
                                        - c1["teacher"] - c2["teacher"]) / 2)
    assert h2["ci95"][0] <= h2["diff"] <= h2["ci95"][1]
    assert by[("unguided", "1x")]["seeds"] == 1     # not run in the second seed
    assert by[("hybrid", "1x")]["gap"] > 100
    g1, g2 = by[("hybrid", "1x")]["gap"], h2["gap"]
    assert g2 < 10 < g1
    t = (g1 - 10) / (g1 - g2)
    assert points["hybrid"] == dict(first_budget=20, updates=round(10 * 2 ** t),
                                    teacher_updates=10)
    assert points["unguided"] == dict(first_budget=None, updates=None, teacher_updates=10)


def test_unfinished_runs_are_left_out_and_the_report_is_written(tmp_path, capsys):
    _seed(tmp_path / "s1", T1, {"hybrid_1x": FAR, "hybrid_2x": NEAR})
    (tmp_path / "s1" / "runs" / "hybrid_4x").mkdir()      # started, not finished
    out = tmp_path / "out"
    assert parity.main([str(tmp_path / "s1"), "--output-dir", str(out),
                        "--resamples", "200", "--threshold", "20"]) == 0
    data = json.loads((out / "parity.json").read_text())
    assert [r["budget"] for r in data["rows"]] == ["1x", "2x"]
    assert data["parity"]["hybrid"]["updates"] is not None
    md = (out / "parity.md").read_text()
    assert "| hybrid | 2x | 20 | 1 |" in md
    assert parity.main([str(tmp_path / "s1"), "--output-dir", str(out), "--resamples", "200"]) == 0
    gap = json.loads((out / "parity.json").read_text())["rows"][-1]["gap"]
    assert f"- hybrid: not within 5 % by 2x (20 updates: {gap:+.1f} %)" in (
        out / "parity.md").read_text()
    assert (out / "parity.png").stat().st_size > 1000
    assert "hybrid" in capsys.readouterr().out


def test_missing_teacher_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "runs" / "teacher").mkdir(parents=True)
    assert parity.main([str(tmp_path), "--output-dir", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert "teacher" in err and "--scale parity" in err and "Traceback" not in err


def test_plot_labels_the_points_with_fewer_seeds(tmp_path, monkeypatch):
    import matplotlib.axes

    labels = []
    real = matplotlib.axes.Axes.annotate

    def annotate(self, text, *args, **kwargs):
        labels.append(text)
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", annotate)
    _seed(tmp_path / "s1", T1, {"hybrid_1x": FAR, "hybrid_2x": NEAR, "unguided_1x": FAR})
    _seed(tmp_path / "s2", T2, {"hybrid_1x": FAR, "hybrid_2x": T2})
    teachers, students = parity.collect([tmp_path / "s1", tmp_path / "s2"])
    rows, _ = parity.parity_table(teachers, students, resamples=50)
    parity.plot(rows, teachers, tmp_path / "p.png")
    assert labels == ["1 of 2 seeds"]  # unguided 1x only: hybrid has both seeds
