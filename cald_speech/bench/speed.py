"""Time, real-time factor and peak memory versus audio length: teacher vs student.

``cald-bench speed`` transcribes synthetic audio of growing length (``--minutes``) with

- ``teacher-onepass``: the teacher over the whole file at once (blockwise CNN, then the
  quadratic encoder over the whole sequence), until it no longer fits;
- ``teacher-windowed``: the teacher in 30 s windows with 2 s of context on each side,
  posteriors stitched (how a transformer is used on long audio);
- ``student-onepass``: the student over the whole file at once (blockwise CNN, encoder
  over the whole sequence, see :mod:`cald_speech.inference`),

all in one run, and prints a table, writes ``speed.json`` (with the machine's record)
and ``speed.png`` (time and peak memory versus audio length).

Models: ``--model DIR ...`` (packaged folders or hub ids in the local Hugging Face
cache, resolved before anything runs; a student folder gets
``student-onepass``, a teacher folder the two teacher systems), or ``--shape
wav2vec2-base`` / ``wav2vec2-large-lv60``: a CTC teacher with the public checkpoint's
architecture and random weights (seeded) and its BiMamba2 student, packaged into a
temporary folder first — random weights cost the same as trained ones.

How it measures:

- every (model, system, length) runs in a **fresh subprocess**
  (:func:`cald_speech.bench.report.run_child`): its peak memory is its own;
- in the child: the model is loaded, the audio (seeded noise, 16 kHz) is created, one
  untimed transcription of it warms everything up, then ``--repeats`` (default 3) full
  transcriptions (posteriors, decoding, word timestamps) are timed: the table and the
  plot show the best, the JSON every time and the spread (slowest minus best). The
  default lengths (0.25 to 2 minutes) finish in minutes on a CPU; ``--minutes 10 30
  60`` measures the long end;
- memory on CPU: ``peak_rss_mb`` is the process's resident-set high-water mark during
  the first timed transcription (everything the process holds: interpreter, model, the
  waveform);
  ``extra_rss_mb`` subtracts the resident set just before it. On CUDA
  ``torch.cuda.max_memory_allocated`` is reported too;
- a configuration whose time or memory, extrapolated from the same series' previous
  lengths (growth exponent fitted on the last two and clamped to [1, 2]; with a single
  point, the growth the system is built for: 2 for ``teacher-onepass``, 1 for the
  windowed teacher and the one-pass student, see :data:`SYSTEM_GROWTH`), would exceed
  ``--time-cap`` / ``--mem-cap-gb`` is reported as skipped, not run; after a failure,
  timeout or skip, longer lengths of that series are skipped too.

Other processes on the machine change the timings; the load average before and after
is recorded.

Example
-------
>>> args = parse_args(["--shape", "wav2vec2-base", "--minutes", "1", "0.5"])
>>> args.minutes, args.systems
([0.5, 1.0], ['teacher-onepass', 'teacher-windowed', 'student-onepass'])
"""

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from cald_speech.allocator import tune_allocator
from cald_speech.bench.options import (  # noqa: F401 (re-exported)
    DEFAULT_SYSTEMS,
    SHAPES,
    SYSTEMS,
)
from cald_speech.bench.options import speed_parser as build_parser
from cald_speech.bench.report import (
    MemoryMeter,
    extrapolate,
    format_table,
    loglog_plot,
    machine_info,
    machine_line,
    run_child,
    write_json,
)
from cald_speech.cli import fail, parse
from cald_speech.data.audio import SAMPLE_RATE
from cald_speech.errors import CaldError, ConfigError
from cald_speech.hub import resolve_model_source
from cald_speech.inference import (
    DEFAULT_NORM_WINDOW_S,
    DEFAULT_OVERLAP_S,
    DEFAULT_PROJECTION_CACHE_MB,
    DEFAULT_WINDOW_S,
    Transcriber,
)
from cald_speech.inference.precision import check_precision, compute_precision

#: The systems (:data:`~cald_speech.bench.options.SYSTEMS`): ``teacher-layers`` and
#: ``layers-onepass`` compare a layer student (GenDistiller, DistilHuBERT) with its
#: teacher: every layer of the model over the whole file in one pass (no decoding).
#: How each system runs (Transcriber mode, or ``layers``) and which kind of model it needs.
SYSTEM_MODES = {
    "teacher-onepass": ("teacher", "one-pass"),
    "teacher-windowed": ("teacher", "windowed"),
    "student-onepass": ("student", "one-pass"),
    "teacher-layers": ("teacher", "layers"),
    "layers-onepass": ("layers", "layers"),
}
#: Growth exponent of time and memory with audio length that each system is built for;
#: the skip predictor's guess when only one shorter length has been measured.
SYSTEM_GROWTH = {"teacher-onepass": 2.0, "teacher-windowed": 1.0, "student-onepass": 1.0,
                 "teacher-layers": 2.0, "layers-onepass": 1.0}
WARMUP_S = 2.0


def parse_args(argv=None):
    """Parses the options (:func:`~cald_speech.bench.options.speed_parser`)."""
    return build_parser().parse_args(argv)


# ----------------------------------------------------------------- child process
def synthetic_audio(seconds, seed=0):
    """Seeded noise at 16 kHz standing in for speech (cost does not depend on content).

    Example
    -------
    >>> synthetic_audio(0.5).shape
    torch.Size([8000])
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randn(int(round(seconds * SAMPLE_RATE)), generator=g).mul_(0.1)


def run_config(cfg):
    """Runs one configuration in this process and returns its result.

    Arguments
    ---------
    cfg : dict
        ``model`` (folder), ``mode`` (``one-pass`` / ``windowed``), ``minutes`` (synthetic
        audio) or ``audio`` (a file to transcribe), ``window_s``, ``overlap_s``,
        ``norm_window_s``, ``projection_cache_mb``, ``precision``, ``device``, ``threads``,
        ``return_text``, ``repeats`` (timed runs, default 1) and ``warmup`` (``"full"``:
        one untimed run of the same input first; otherwise a 2 s one).

    Returns
    -------
    dict
        ``cfg`` plus ``status`` ``"ok"``, ``time_s`` (the best of the timed runs),
        ``times_s`` (each), ``spread_s`` (slowest minus best), ``rtf`` (of the best),
        ``audio_s``, ``frames``, the :class:`~cald_speech.bench.report.MemoryMeter`
        fields of the first timed run, ``threads`` and, with ``return_text``, ``text``.
    """
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    if cfg["mode"] == "layers":
        return run_layers_config(cfg)
    device = cfg.get("device", "cpu")
    asr = Transcriber.from_pretrained(cfg["model"], device=device,
                                      window_s=cfg.get("window_s", DEFAULT_WINDOW_S),
                                      overlap_s=cfg.get("overlap_s", DEFAULT_OVERLAP_S),
                                      norm_window_s=cfg.get("norm_window_s",
                                                            DEFAULT_NORM_WINDOW_S),
                                      projection_cache_mb=cfg.get(
                                          "projection_cache_mb", DEFAULT_PROJECTION_CACHE_MB),
                                      precision=cfg.get("precision", "fp32"),
                                      **cfg.get("decoding", {}))
    mode = cfg["mode"]
    if cfg.get("warmup") != "full":
        asr.transcribe_waveform(synthetic_audio(WARMUP_S, seed=1), mode=mode, progress=False)
    audio = cfg.get("audio")
    if audio:
        fn, x = asr.transcribe_file, audio
    else:
        fn, x = asr.transcribe_waveform, synthetic_audio(60.0 * cfg["minutes"])
    result, times, mem = _timed_runs(cfg, device, fn, x, mode=mode, progress=False)
    out = dict(cfg, status="ok", audio_s=result.duration, **times,
               rtf=times["time_s"] / max(result.duration, 1e-9),
               frames=round(result.duration / asr.frame_shift), words=len(result.words),
               threads=torch.get_num_threads(), result_mode=result.mode, **mem)
    if cfg.get("return_text"):
        out["text"] = result.text
    return out


def run_layers_config(cfg):
    """One ``layers`` configuration: every layer of a model over the whole audio at once.

    A layer student generates its target layers; a teacher computes all its hidden
    states. Timed and measured as :func:`run_config` does (after a 2 s warm-up).
    """
    from cald_speech.gendistiller import load_upstream, upstream_layers

    device = cfg.get("device", "cpu")
    model = load_upstream(cfg["model"], device=device)

    def once(wav):
        with torch.inference_mode(), compute_precision(cfg.get("precision", "fp32"), device):
            layers, _ = upstream_layers(model, wav[None].to(device))
        return int(layers[-1].shape[1])

    if cfg.get("warmup") != "full":
        once(synthetic_audio(WARMUP_S, seed=1))
    wav = synthetic_audio(60.0 * cfg["minutes"])
    frames, times, mem = _timed_runs(cfg, device, once, wav)
    audio_s = wav.numel() / SAMPLE_RATE
    return dict(cfg, status="ok", audio_s=audio_s, **times, rtf=times["time_s"] / audio_s,
                frames=frames, words=0, threads=torch.get_num_threads(),
                result_mode="layers", **mem)


def _timed_runs(cfg, device, fn, x, **kwargs):
    """``(result, {"time_s", "times_s", "spread_s"}, memory)`` of ``fn(x, **kwargs)``:
    with ``cfg["warmup"] == "full"`` an untimed run of ``x`` first, then
    ``cfg["repeats"]`` timed runs; the best time counts, the memory is the first timed
    run's."""
    if cfg.get("warmup") == "full":
        fn(x, **kwargs)
    times, mem, result = [], None, None
    for _ in range(max(1, int(cfg.get("repeats") or 1))):
        result, elapsed, measured = _measured(device, fn, x, **kwargs)
        times.append(elapsed)
        mem = mem or measured
    return result, {"time_s": min(times), "times_s": times,
                    "spread_s": max(times) - min(times)}, mem


def _measured(device, fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds, MemoryMeter fields)`` of one timed call."""
    meter = MemoryMeter(device).start()
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - t0, meter.stop()


# ----------------------------------------------------------------- models
def _role(folder):
    from cald_speech.gendistiller import is_layer_student
    from cald_speech.student import read_config

    if is_layer_student(folder):
        return "layers"
    return "student" if "cald" in read_config(folder) else "teacher"


def build_shape_models(shape, folder, tiny=False, mixer="bimamba2", seed=0):
    """Packages a random-weight CTC teacher of ``shape`` and its students into ``folder``.

    ``mixer`` is one mixer name or a list of them: one student per mixer, each converted
    from the same teacher.

    Returns
    -------
    dict
        ``{"teacher": path, "student": path of the first student, "students": {mixer:
        path}}``.

    Example
    -------
    >>> import tempfile
    >>> paths = build_shape_models("wav2vec2-base", tempfile.mkdtemp(), tiny=True,
    ...                            mixer=["bimamba2", "bimamba2_shared"])
    >>> sorted(paths), sorted(paths["students"])
    (['student', 'students', 'teacher'], ['bimamba2', 'bimamba2_shared'])
    """
    import transformers

    from cald_speech.data.tokenizer import CharTokenizer
    from cald_speech.student import convert, package_model, public_config

    tok = CharTokenizer()
    config = public_config(shape, tiny=tiny, vocab_size=len(tok), pad_token_id=0)
    mixers = [mixer] if isinstance(mixer, str) else list(mixer)
    folder = Path(folder)
    info = {"random_weights": True, "shape": shape, "tiny": tiny, "seed": seed}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        teacher = transformers.Wav2Vec2ForCTC(config).eval()
        paths = {"teacher": package_model(teacher, folder / "teacher", tok, info),
                 "students": {}}
        for i, name in enumerate(mixers):
            torch.manual_seed(seed + 1 + i)
            student = convert(teacher, mixer=name).eval()
            sub = "student" if len(mixers) == 1 else f"student-{name}"
            paths["students"][name] = package_model(student, folder / sub, tok,
                                                    {**info, "mixer": name})
            del student
    paths["student"] = paths["students"][mixers[0]]
    del teacher
    return paths


def plan(models, args):
    """Configurations in run order: per model and system, lengths ascending."""
    cfgs = []
    for group, label, folder, role in models:
        for system in args.systems:
            need, mode = SYSTEM_MODES[system]
            if need != role:
                continue
            growth = _layers_growth(folder) if role == "layers" else None
            for minutes in args.minutes:
                cfgs.append(dict(model=folder, growth=growth, group=group, label=label,
                                 system=system, mode=mode, minutes=minutes, window_s=args.window_s,
                                 overlap_s=args.overlap_s, device=args.device,
                                 threads=args.threads,
                                 projection_cache_mb=args.projection_cache_mb,
                                 precision=args.precision, repeats=args.repeats,
                                 warmup="full"))
    return cfgs


def _layers_growth(folder):
    """Growth of a layer student's cost with length: 2 with softmax attention, else 1."""
    info = json.loads((Path(folder) / "gendistiller.json").read_text())
    return 2.0 if info.get("time_mixer", "attention") == "attention" else 1.0


def _mem_cap_mb(args):
    if args.mem_cap_gb:
        return args.mem_cap_gb * 1024
    if str(args.device).startswith("cuda"):
        return 0.8 * torch.cuda.get_device_properties(0).total_memory / 2**20
    try:
        ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError):
        return float("inf")
    return 0.6 * ram_mb


def _mem_key(args):
    return "cuda_peak_mb" if str(args.device).startswith("cuda") else "peak_rss_mb"


def _predict_memory(ok, minutes, mem_key, growth=None):
    """Predicted peak: the memory held before the pass plus the pass's extrapolated extra."""
    if not ok:
        return None
    extra_key = "cuda_extra_mb" if mem_key == "cuda_peak_mb" else "extra_rss_mb"
    base = ok[-1][mem_key] - ok[-1][extra_key]
    extra = extrapolate([(r["minutes"], r[extra_key] + 1.0) for r in ok], minutes,
                        single=growth)
    return base + extra


def _run(cfg, args):
    if not args.in_process:
        return run_child("cald_speech.bench.speed", cfg, max(3 * args.time_cap, 600.0))
    try:
        return run_config(cfg)
    except (CaldError, RuntimeError, MemoryError) as exc:
        return dict(cfg, status="failed", reason=f"{type(exc).__name__}: {exc}"[:300])


def run(models, args):
    """Runs the plan with skips; returns the list of results."""
    from tqdm import tqdm

    results, series = [], {}
    cap_mb = _mem_cap_mb(args)
    mem_key = _mem_key(args)
    for cfg in tqdm(plan(models, args), desc="speed bench", unit="cfg"):
        done = series.setdefault((cfg["label"], cfg["system"]), [])
        ok = [r for r in done if r["status"] == "ok"]
        if done and done[-1]["status"] != "ok":
            res = dict(cfg, status="skipped", reason=f"shorter audio {done[-1]['status']}")
        else:
            growth = cfg.get("growth") or SYSTEM_GROWTH[cfg["system"]]
            t_pred = extrapolate([(r["minutes"], r["time_s"]) for r in ok], cfg["minutes"],
                                 single=growth)
            m_pred = _predict_memory(ok, cfg["minutes"], mem_key, growth)
            if t_pred is not None and t_pred > args.time_cap:
                res = dict(cfg, status="skipped", predicted_time_s=t_pred,
                           reason=f"predicted {t_pred:.0f} s > time cap {args.time_cap:.0f} s")
            elif m_pred is not None and m_pred > cap_mb:
                res = dict(cfg, status="skipped", predicted_mem_mb=m_pred,
                           reason=f"predicted {m_pred:.0f} MB > memory cap {cap_mb:.0f} MB")
            else:
                res = _run(cfg, args)
        done.append(res)
        results.append(res)
    return results


COLUMNS = [
    ("label", "model", "s"),
    ("system", "system", "s"),
    ("minutes", "minutes", "g"),
    ("time_s", "best s", ".2f"),
    ("spread_s", "spread s", ".2f"),
    ("rtf", "RTF", ".3f"),
    ("peak_rss_mb", "peak RSS MB", ".0f"),
    ("extra_rss_mb", "extra MB", ".0f"),
    ("cuda_peak_mb", "CUDA MB", ".0f"),
    ("note", "status", "s"),
]


def table(results):
    """The results as a text table."""
    rows = []
    for r in results:
        note = "ok" if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}"
        rows.append(dict(r, note=note))
    return format_table(rows, COLUMNS)


def targets(results):
    """Checks of the performance targets that these results contain (one line each).

    Each one-pass student is compared with the teachers of its own group (same run):
    at 10 minutes, at least 5x faster than the one-pass teacher; at 60 minutes, a real-
    time factor at or below the windowed teacher's and a peak of at most 4 GiB.

    Example
    -------
    >>> rows = [dict(group="g", label=w, system=s, minutes=m, status="ok", time_s=t,
    ...              rtf=t / (60 * m), peak_rss_mb=mb)
    ...         for w, s, m, t, mb in [("g", "teacher-onepass", 10, 300.0, 2000),
    ...                               ("g x", "student-onepass", 10, 50.0, 1500),
    ...                               ("g", "teacher-windowed", 60, 480.0, 2000),
    ...                               ("g x", "student-onepass", 60, 420.0, 3000)]]
    >>> for line in targets(rows):
    ...     print(line)
    g x, 10 min: student one-pass 6.0x faster than the teacher one-pass (target >= 5x): met
    g x, 60 min: student one-pass RTF 0.117 vs teacher windowed 0.133 (target: <=): met
    g x, 60 min: student one-pass peak RSS 2.93 GiB (target <= 4): met
    """
    ok = [r for r in results if r["status"] == "ok"]

    def find(group, system, minutes):
        return next((r for r in ok if r["group"] == group and r["system"] == system
                     and r["minutes"] == minutes), None)

    def verdict(good):
        return "met" if good else "not met"

    lines = []
    for stu in ok:
        if stu["system"] != "student-onepass":
            continue
        who = stu["label"]
        if stu["minutes"] == 10:
            one = find(stu["group"], "teacher-onepass", 10)
            if one:
                x = one["time_s"] / stu["time_s"]
                lines.append(f"{who}, 10 min: student one-pass {x:.1f}x faster than the "
                             f"teacher one-pass (target >= 5x): {verdict(x >= 5)}")
        elif stu["minutes"] == 60:
            win = find(stu["group"], "teacher-windowed", 60)
            if win:
                lines.append(f"{who}, 60 min: student one-pass RTF {stu['rtf']:.3f} vs teacher "
                             f"windowed {win['rtf']:.3f} (target: <=): "
                             f"{verdict(stu['rtf'] <= win['rtf'])}")
            gib = stu["peak_rss_mb"] / 1024
            lines.append(f"{who}, 60 min: student one-pass peak RSS {gib:.2f} GiB "
                         f"(target <= 4): {verdict(gib <= 4)}")
    return lines


def folder_label(folder):
    """A model's label: its folder name, or the run folder's for a recipe's ``model/``.

    Example
    -------
    >>> folder_label("results/demo/teacher/model"), folder_label("models/my-student")
    ('teacher', 'my-student')
    """
    path = Path(folder).resolve()
    return path.parent.name if path.name == "model" else path.name


def _labelled_models(args, workdir, folders=()):
    """(group, label, folder, role) of each model; ``folders``: (argument, local folder)."""
    models = []
    if args.shape:
        for shape in args.shape:
            paths = build_shape_models(shape, Path(workdir) / shape, tiny=args.tiny,
                                       mixer=args.mixers)
            label = shape + (" (tiny)" if args.tiny else "")
            models.append((label, label, paths["teacher"], "teacher"))
            for name, path in paths["students"].items():
                who = label if len(paths["students"]) == 1 else f"{label} {name}"
                models.append((label, who, path, "student"))
    else:
        for name, folder in folders:
            models.append(("models", folder_label(name), str(folder), _role(folder)))
    return models


def main(argv=None):
    """Entry point of ``cald-bench speed``; returns the exit status."""
    args, status = parse(build_parser(), list(sys.argv[1:] if argv is None else argv))
    return status if args is None else command(args)


def command(args):
    """``cald-bench speed`` on parsed arguments (:func:`build_parser`)."""
    if args.child is None and not (args.model or args.shape):
        return fail("cald-bench speed", ConfigError("give --model DIR ... or --shape NAME ..."))
    if len(set(args.mixers)) != len(args.mixers):
        return fail("cald-bench speed", ConfigError(
            f"--mixers {' '.join(args.mixers)}: give distinct mixers"))
    try:
        allocator = tune_allocator()
        if not args.child:
            check_precision(args.precision, args.device)
            folders = [(m, resolve_model_source(m)) for m in args.model or ()]
    except CaldError as exc:
        return fail("cald-bench speed", exc)
    if args.child:
        print(json.dumps(dict(run_config(json.loads(args.child)), allocator=allocator["mode"])))
        return 0
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = dict(machine_info(), allocator=allocator)
    machine["device"] = args.device
    print(machine_line(machine, out_dir / "speed.json"))
    workdir = tempfile.mkdtemp(prefix="cald-speed-")
    try:
        models = _labelled_models(args, workdir, folders)
        results = run(models, args)
    except CaldError as exc:
        return fail("cald-bench speed", exc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine["load_avg_after"] = list(os.getloadavg())
    print(table(results))
    checks = targets(results)
    for line in checks:
        print(line)
    options = {k: v for k, v in vars(args).items() if k != "child"}
    payload = dict(machine=machine, args=options, results=results, targets=checks)
    print(f"wrote {write_json(out_dir / 'speed.json', payload)}")
    if not args.no_plot:
        series = {}
        for r in results:
            if r["status"] == "ok":
                series.setdefault(f"{r['label']}: {r['system']}", []).append(r)
        mem_key = _mem_key(args)
        title = (f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
                 f"{machine['torch_threads']} threads, device {args.device}")
        path = loglog_plot(
            series, out_dir / "speed.png",
            [("minutes", "time_s", "wall time", "seconds"),
             ("minutes", mem_key, "peak memory", "MB")],
            "audio length (minutes)", title=title,
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as exc:  # a child's bad configuration
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
