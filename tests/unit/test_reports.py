"""Reports that say what they mean: agreement and relative change named apart, units on
every column, plots readable by someone who did not build them, speed timed after a
warm-up and repeated."""

import json

import pytest

from cald_speech.bench import runs as runs_mod
from cald_speech.bench.report import readable_axes
from cald_speech.bench.wer import table


def _rates(wer, cer):
    return dict(wer=wer, cer=cer, substitutions=1, deletions=0, insertions=0, ref_words=10,
                seconds=1.0, rtf=0.1)


def test_wer_table_names_agreement_and_its_unit():
    summary = {"teacher": _rates(0.1, 0.05), "student": _rates(0.12, 0.06),
               "agreement": dict(_rates(0.04, 0.02), identical=0.5), "items": 4,
               "failed": {}}
    text = table(summary)
    assert "agreement with teacher" in text and "vs teacher" not in text
    assert "scored against the teacher's (WER/CER %" in text
    assert "identical teacher and student transcripts: 50.0 % of the items" in text


def test_demo_report_names_relative_change_and_units(tmp_path):
    from types import SimpleNamespace

    from cald_speech.demo.report import gap_statement, wer_bench_rows

    runs = [{"name": "teacher", "splits": {"test-clean": {"WER": 10.0, "CER": 4.0}}},
            {"name": "s", "splits": {"test-clean": {"WER": 10.5, "CER": 3.8}}}]
    assert "(+5.0 % relative to teacher)" in gap_statement(runs)[0]
    bench = tmp_path / "bench" / "wer_s"
    bench.mkdir(parents=True)
    (bench / "wer.json").write_text(json.dumps(
        {"teacher": {"wer": 0.1, "cer": 0.05}, "student": {"wer": 0.12, "cer": 0.06},
         "agreement": {"wer": 0.04, "identical": 0.5}, "items": 4}))
    pipe = SimpleNamespace(cfg={"students": ["s"]}, results=tmp_path)
    (row,) = wer_bench_rows(pipe)
    assert row["agreement with teacher, WER %"] == pytest.approx(4.0)
    assert row["identical transcripts, % of items"] == pytest.approx(50.0)
    assert all(k in ("student", "items") or "%" in k for k in row)


@pytest.fixture()
def hybrid_run(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "hyperparams.yaml").write_text("mode: hybrid\nswitch_step: 30\n")
    steps = [{"step": s, "time": s, "task": 5.0 / s, "layer": 2.0 / s if s < 30 else None,
              "kd": 1.0 / s, "total": 8.0 / s} for s in range(1, 61)]
    (folder / "steps.jsonl").write_text("\n".join(json.dumps(r) for r in steps) + "\n")
    (folder / "wer_test-clean.json").write_text(json.dumps({"WER": 40.0, "CER": 12.0}))
    return runs_mod.summarize_run(folder, "hybrid")


def test_training_curves_say_what_each_panel_is_and_where_the_layer_loss_stops(hybrid_run):
    assert hybrid_run["switch_step"] == 30
    fig = runs_mod.training_figure([hybrid_run])
    axes = fig.axes
    assert [ax.get_title().split(":")[0] for ax in axes] == ["kd", "layer", "task", "total"]
    assert all(ax.get_ylabel() and "loss" in ax.get_ylabel() for ax in axes)
    assert all(ax.get_title().split(":", 1)[1].strip() for ax in axes)  # explained
    for ax in axes:  # the switch marked in every panel
        assert any(list(line.get_xdata()) == [30, 30] for line in ax.get_lines())
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "layer loss off from update 30" in legend


def test_metric_plot_shows_wer_and_cer(hybrid_run):
    fig = runs_mod.metric_figure([hybrid_run])
    assert [ax.get_ylabel().split(" ")[0] for ax in fig.axes] == ["WER", "CER"]


@pytest.mark.parametrize("ys, scale", [([1000, 1150, 1300], "linear"),
                                       ([100, 1000, 10000], "log")])
def test_a_narrow_range_gets_a_linear_axis(ys, scale):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.loglog([1, 2, 3], ys)
    readable_axes(ax)
    assert ax.get_yscale() == scale
    plt.close(fig)


def test_speed_warms_up_then_keeps_the_best_of_its_repeats(monkeypatch):
    from cald_speech.bench import speed

    calls, times = [], iter([5.0, 3.0, 4.0])

    def measured(device, fn, x, **kwargs):
        fn(x)
        return "result", next(times), {"peak_rss_mb": 1.0 + len(calls)}

    monkeypatch.setattr(speed, "_measured", measured)
    result, timing, mem = speed._timed_runs({"warmup": "full", "repeats": 3}, "cpu",
                                            calls.append, "audio")
    assert calls == ["audio"] * 4                  # one warm-up, three timed
    assert timing == {"time_s": 3.0, "times_s": [5.0, 3.0, 4.0], "spread_s": 2.0}
    assert mem == {"peak_rss_mb": 3.0}             # the first timed run's


def test_speed_defaults_repeat_and_stay_short():
    from cald_speech.bench.options import speed_parser

    args = speed_parser().parse_args(["--shape", "wav2vec2-base"])
    assert args.repeats >= 3 and max(args.minutes) <= 2
