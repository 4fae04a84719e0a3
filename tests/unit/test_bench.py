"""cald-bench: speed (table/JSON/PNG, skips, fresh-process run), wer and longform."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from cald_speech.bench import cli, speed, wer
from cald_speech.bench.report import cpu_info, extrapolate, format_table
from cald_speech.inference import Transcriber
from tests.integration.test_asr_recipe import edits

SR = 16000


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return speed.build_shape_models("wav2vec2-base", tmp_path_factory.mktemp("m"), tiny=True)


def _png(path):
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_speed_all_systems_table_json_png(tmp_path, capsys):
    out = tmp_path / "speed"
    code = speed.main(["--shape", "wav2vec2-base", "--tiny", "--minutes", "0.01,0.005",
                       "--window-s", "0.2", "--overlap-s", "0.02", "--out-dir", str(out),
                       "--in-process"])
    assert code == 0
    doc = json.loads((out / "speed.json").read_text())
    got = [(r["system"], r["minutes"], r["status"]) for r in doc["results"]]
    assert got == [(s, m, "ok") for s in speed.DEFAULT_SYSTEMS for m in (0.005, 0.01)]
    for r in doc["results"]:
        assert r["time_s"] > 0 and r["peak_rss_mb"] > 0 and r["rtf"] > 0
        assert abs(r["audio_s"] - 60 * r["minutes"]) < 1e-3
    windowed = [r for r in doc["results"] if r["system"] == "teacher-windowed"]
    assert all(r["result_mode"] == "windowed" for r in windowed)
    assert all(r["projection_cache_mb"] == 512 for r in doc["results"])
    for key in ("cpu", "cores", "torch", "torch_threads", "device", "load_avg_after"):
        assert key in doc["machine"]
    assert _png(out / "speed.png")
    printed = capsys.readouterr().out
    assert "student-onepass" in printed and "peak RSS MB" in printed


def test_speed_one_teacher_several_students(tmp_path, capsys):
    # --mixer a,b: one teacher and one student per mixer, in the same run, each student
    # checked against that run's teacher.
    out = tmp_path / "speed"
    code = speed.main(["--shape", "wav2vec2-base", "--tiny", "--minutes", "0.005",
                       "--systems", "teacher-onepass,student-onepass",
                       "--mixer", "bimamba2,bimamba2_shared", "--out-dir", str(out),
                       "--in-process", "--no-plot"])
    assert code == 0
    doc = json.loads((out / "speed.json").read_text())
    got = [(r["label"], r["system"]) for r in doc["results"]]
    assert got == [("wav2vec2-base (tiny)", "teacher-onepass"),
                   ("wav2vec2-base (tiny) bimamba2", "student-onepass"),
                   ("wav2vec2-base (tiny) bimamba2_shared", "student-onepass")]
    assert {r["group"] for r in doc["results"]} == {"wav2vec2-base (tiny)"}
    assert doc["machine"]["allocator"]["mode"] in ("tuned", "default", "unsupported")
    assert speed.main(["--shape", "wav2vec2-base", "--mixers", "bimamba2", "nope"]) == 2
    assert "invalid choice 'nope'" in capsys.readouterr().err
    assert speed.main(["--shape", "wav2vec2-base", "--mixers", "bimamba2", "bimamba2"]) == 2
    assert "give distinct mixers" in capsys.readouterr().err


def test_speed_skips_what_is_predicted_not_to_fit(tmp_path, models):
    out = tmp_path / "speed"
    code = speed.main(["--model", models["student"], "--minutes", "0.005,0.01,0.02",
                       "--time-cap", "1e-9", "--out-dir", str(out), "--in-process",
                       "--no-plot"])
    assert code == 0
    res = json.loads((out / "speed.json").read_text())["results"]
    assert [r["status"] for r in res] == ["ok", "skipped", "skipped"]
    assert "time cap" in res[1]["reason"] and "shorter audio" in res[2]["reason"]


def test_speed_predicts_each_system_with_its_own_growth(monkeypatch):
    # One measured length: the quadratic one-pass teacher is predicted to grow 100x from
    # 1 to 10 minutes, the linear-time systems 10x (time and memory alike).
    def fake_run(cfg, args):
        return dict(cfg, status="ok", time_s=10.0 * cfg["minutes"],
                    peak_rss_mb=1000.0 + 100.0 * cfg["minutes"],
                    extra_rss_mb=100.0 * cfg["minutes"])

    monkeypatch.setattr(speed, "_run", fake_run)
    args = speed.parse_args(["--shape", "wav2vec2-base", "--minutes", "1,10",
                             "--time-cap", "150", "--mem-cap-gb", "100"])
    models = [("g", "teacher", "t", "teacher"), ("g", "student", "s", "student")]
    res = {(r["system"], r["minutes"]): r for r in speed.run(models, args)}
    assert res[("teacher-onepass", 10.0)]["status"] == "skipped"
    assert res[("teacher-onepass", 10.0)]["predicted_time_s"] == pytest.approx(1000.0)
    assert res[("teacher-windowed", 10.0)]["status"] == "ok"
    assert res[("student-onepass", 10.0)]["status"] == "ok"

    args = speed.parse_args(["--shape", "wav2vec2-base", "--minutes", "1,10",
                             "--time-cap", "1e6", "--mem-cap-gb", "3"])
    res = {(r["system"], r["minutes"]): r for r in speed.run(models, args)}
    onepass = res[("teacher-onepass", 10.0)]
    assert onepass["status"] == "skipped" and "memory cap" in onepass["reason"]
    assert onepass["predicted_mem_mb"] == pytest.approx(1000.0 + 101.0 * 100)
    assert res[("student-onepass", 10.0)]["status"] == "ok"  # predicted 1000 + 1010 MB


def test_speed_runs_each_configuration_in_a_fresh_process(tmp_path, models):
    out = tmp_path / "speed"
    code = speed.main(["--model", models["student"], "--minutes", "0.005", "--out-dir",
                       str(out)])
    assert code == 0
    (res,) = json.loads((out / "speed.json").read_text())["results"]
    assert res["status"] == "ok", res.get("reason")
    assert res["mem_method"] in ("VmHWM", "ru_maxrss (upper bound)")
    assert res["peak_rss_mb"] >= res["rss_before_mb"] > 0


def test_report_helpers():
    assert extrapolate([(1, 1.0), (2, 4.0), (4, 8.0)], 8) == pytest.approx(16.0)
    assert extrapolate([(1, 1.0), (2, 16.0)], 4) == pytest.approx(64.0)  # clamped to 2
    assert extrapolate([], 3) is None
    text = format_table([{"a": "x", "b": None}], [("a", "A", "s"), ("b", "B", ".1f")])
    assert text.splitlines() == ["A  B", "x  -"]


def _corpus(root, n=3):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = root / f"utt{i}.wav"
        seconds = 0.3 + 0.1 * i
        sf.write(path, (0.2 * rng.standard_normal(int(seconds * SR))).astype("float32"), SR)
        rows.append({"ID": f"utt{i}", "duration": seconds, "wav": f"$data_root/{path.name}",
                     "spk_id": "s", "wrd": ["HELLO WORLD", "A CAT", "IT'S FINE"][i % 3]})
    rows.append({"ID": "gone", "duration": 1.0, "wav": "$data_root/missing.wav",
                 "spk_id": "s", "wrd": "LOST"})
    csv_path = root / "test.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def test_cpu_info_tells_generations_apart(tmp_path):
    two_cpus = ("processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: {fam}\n"
                "model\t\t: {mod}\nmodel name\t: AMD EPYC\n"
                "flags\t\t: fpu sse2 avx fma avx2 {extra} avx512_bf16\n\n")
    path = tmp_path / "cpuinfo"
    path.write_text(two_cpus.format(i=0, fam=25, mod=17, extra="f16c avx512f")
                    + two_cpus.format(i=1, fam=26, mod=2, extra="amx_tile"))
    info = cpu_info(path)
    assert info == dict(cpu="AMD EPYC", cpu_family="25", cpu_model="17",
                        cpu_simd="avx avx2 avx512_bf16 avx512f f16c fma")
    assert cpu_info(tmp_path / "missing")["cpu_family"] is None


#: per-utterance error counts of ``wer_utterances.csv``: (reference, hypothesis) columns
COUNTS = {"teacher_errors": ("ref", "teacher"), "student_errors": ("ref", "student"),
          "disagreements": ("teacher", "student")}


def test_wer_benchmark_on_a_tiny_csv(tmp_path, models, capsys):
    csv_path = _corpus(tmp_path)
    out = tmp_path / "wer"
    code = cli.main(["wer", "--teacher", models["teacher"], "--student", models["student"],
                     "--csv", str(csv_path), "--out-dir", str(out), "--window-s", "0.25",
                     "--overlap-s", "0.02"])
    assert code == 1          # results written, but one item failed (cald_speech.cli)
    doc = json.loads((out / "wer.json").read_text())
    assert doc["items"] == 3 and list(doc["failed"]) == ["gone"]
    assert doc["teacher"]["ref_words"] == 2 + 2 + 2
    with open(out / "wer_utterances.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["ID"] for r in rows] == ["utt0", "utt1", "utt2"]
    assert rows[0]["ref"] == "HELLO WORLD"
    utts = json.loads((out / "wer_utterances.json").read_text())
    assert [(u["ID"], u["ref"], u["teacher"], u["student"]) for u in utts] == [
        (r["ID"], r["ref"], r["teacher"], r["student"]) for r in rows]
    assert all(u[k] == int(r[k]) for u, r in zip(utts, rows) for k in COUNTS)
    # every figure recomputed from the per-utterance transcripts
    for r in rows:
        assert int(r["ref_words"]) == len(r["ref"].split())
        for key, (ref, hyp) in COUNTS.items():
            assert int(r[key]) == edits(r[ref].split(), r[hyp].split()), (r["ID"], key)
    for key in ("teacher", "student", "agreement"):
        ref, hyp = ("teacher", "student") if key == "agreement" else ("ref", key)
        words = sum(len(r[ref].split()) for r in rows)
        assert doc[key]["wer"] == pytest.approx(
            sum(edits(r[ref].split(), r[hyp].split()) for r in rows) / words), key
        assert doc[key]["cer"] == pytest.approx(
            sum(edits(r[ref], r[hyp]) for r in rows) / sum(len(r[ref]) for r in rows)), key
    identical = sum(r["teacher"] == r["student"] for r in rows) / len(rows)
    assert doc["agreement"]["identical"] == pytest.approx(identical)
    captured = capsys.readouterr()
    assert "agreement with teacher" in captured.out and "skipped gone" in captured.err


def test_wer_agreement_of_a_model_with_itself(tmp_path, models):
    items = wer.read_items(_corpus(tmp_path))
    asr = Transcriber.from_pretrained(models["student"])
    summary, utts = wer.evaluate(asr, asr, items)
    assert summary["agreement"]["wer"] == 0 and summary["agreement"]["identical"] == 1
    assert all(u["diff"] == "" and u["disagreements"] == 0 for u in utts)


def test_longform_benchmark(tmp_path, models):
    csv_path = _corpus(tmp_path)
    out = tmp_path / "lf"
    code = cli.main(["longform", "--teacher", models["teacher"], "--student",
                     models["student"], "--csv", str(csv_path), "--minutes", "0.03",
                     "--gap-s", "0.1", "--window-s", "0.4", "--overlap-s", "0.05",
                     "--norm-window-s", "0.5", "--out-dir", str(out), "--in-process"])
    assert code == 0
    doc = json.loads((out / "longform.json").read_text())
    rec = doc["recording"]
    assert rec["duration"] >= 1.8 and rec["passes"] >= 2
    assert list(doc["skipped"]) == ["gone"]
    assert sf.info(str(out / "longform.wav")).samplerate == SR
    ref = (out / "longform_reference.txt").read_text().split()
    assert ref[:4] == ["HELLO", "WORLD", "A", "CAT"]
    systems = {r["system"]: r for r in doc["results"]}
    assert set(systems) == {"teacher-windowed", "student-onepass"}
    assert systems["teacher-windowed"]["result_mode"] == "windowed"
    assert systems["student-onepass"]["result_mode"] == "one-pass"
    assert "agreement_with_teacher_windowed" in systems["student-onepass"]
    assert all(r["scores"]["ref_words"] == len(ref) for r in systems.values())
    assert all(r["norm_window_s"] == 0.5 for r in systems.values())


def test_cli_usage():
    assert cli.main(["--help"]) == 0
    assert cli.main(["nope"]) == 2


def test_speed_of_a_layer_student_beside_its_teacher(tmp_path, models):
    from cald_speech.gendistiller import build_layer_student, upstream_layers
    from cald_speech.student import load_model

    teacher = load_model(models["teacher"])
    layer_student = tmp_path / "gendistiller"
    build_layer_student(teacher, target_layers=[1, 2], encoder_layers=1).save_pretrained(
        layer_student)
    out = tmp_path / "speed"
    code = speed.main(["--model", models["teacher"], str(layer_student), "--minutes", "0.005",
                       "--systems", "teacher-layers,layers-onepass", "--out-dir", str(out),
                       "--in-process", "--no-plot"])
    assert code == 0
    res = {r["system"]: r for r in json.loads((out / "speed.json").read_text())["results"]}
    assert sorted(res) == ["layers-onepass", "teacher-layers"]
    n = upstream_layers(teacher, speed.synthetic_audio(60 * 0.005)[None])[0][0].shape[1]
    assert all(r["status"] == "ok" and r["frames"] == n for r in res.values())
