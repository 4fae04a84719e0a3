"""The main job behind ``make demo``: the whole story on data made on the spot.

Stages (each resumable, skipped when its output is up to date):

1. ``corpus``: synthesize a LibriSpeech-format corpus offline (test voices and
   sentences never heard in training);
2. ``manifests``: its SpeechBrain CSV manifests and a character tokenizer;
3. ``pretrained``: the offline starting model (``models/pretrained-offline``, made by
   ``tools/make_pretrained.sh``: a small wav2vec2 trained with CTC on a different
   synthetic corpus; it stands in for a self-supervised checkpoint, it is not one);
4. ``teacher``: CTC fine-tuning of that transformer (the LibriSpeech recipe);
5. ``students``: conversion to BiMamba2 students trained with CALD (and, for
   contrast, without guidance), same recipe;
6. ``bench``: WER/CER of teacher vs students on the held-out test split, speed and
   memory vs audio length, long-form transcription of a test concatenation;
7. ``report``: ``results/demo/report.md`` with tables, plots and the exact commands.

Sizes, epochs and steps live in ``hparams/demo.yaml`` (``--scale small`` or ``full``).

    python -m cald_speech.demo --scale small [--data data/demo] [--results results/demo]
"""

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from cald_speech.cli import add_version, fail, parse
from cald_speech.errors import CaldError, ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "hparams" / "demo.yaml"
RECIPE = ROOT / "recipes" / "LibriSpeech" / "ASR"
PROG = "python -m cald_speech.demo"
STAGES = ("corpus", "manifests", "pretrained", "teacher", "students", "bench", "report")
STAMP = ".demo-command.json"


def load_scale(scale, config=DEFAULT_CONFIG):
    """The settings of one scale from the demo config.

    Example
    -------
    >>> cfg = load_scale("small")
    >>> sorted(cfg)[:3]
    ['bench', 'corpus', 'main_student']
    """
    with open(config, encoding="utf-8") as f:
        scales = yaml.safe_load(f)
    if scale not in scales:
        raise ConfigError(f"{config}: unknown scale '{scale}'; choose one of "
                          f"{sorted(scales)}")
    return scales[scale]


def rel(path):
    """``path`` relative to the repository root when inside it (for printed commands).

    Example
    -------
    >>> rel(ROOT / "results" / "demo")
    'results/demo'
    """
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def file_digest(path):
    """SHA-256 of a file (hex, first 16 characters); ``None`` when missing."""
    if not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


#: The code a step's result depends on: the package, the recipes and their hparams.
#: ``hparams/demo.yaml`` is left out: its settings reach the steps as their commands.
CODE_GLOBS = ("cald_speech/**/*.py", "recipes/**/*.py", "recipes/**/*.yaml", "hparams/**/*.yaml")


def code_digest(root=ROOT, exclude=("hparams/demo.yaml",)):
    """SHA-256 (hex, 16 characters) over the paths and contents of the files of
    :data:`CODE_GLOBS` under ``root``: a finished step is out of date once its code
    changed (a package update, an edited recipe or hparams file).

    Example
    -------
    >>> len(code_digest())
    16
    """
    root = Path(root)
    files = sorted({p for pattern in CODE_GLOBS for p in root.glob(pattern)
                    if p.is_file() and "__pycache__" not in p.parts})
    h = hashlib.sha256()
    for p in files:
        name = p.relative_to(root).as_posix()
        if name in exclude:
            continue
        h.update(name.encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def overrides(options):
    """Recipe command-line overrides from a mapping (lists as YAML flow sequences).

    Example
    -------
    >>> overrides({"number_of_epochs": 3, "test_splits": ["dev-clean", "test-clean"]})
    ['--number_of_epochs', '3', '--test_splits', '[dev-clean,test-clean]']
    """
    out = []
    for key, value in (options or {}).items():
        if isinstance(value, (list, tuple)):
            value = "[" + ",".join(str(v) for v in value) + "]"
        elif value is None:
            value = "null"
        elif isinstance(value, bool):
            value = str(value).lower()
        out += [f"--{key}", str(value)]
    return out


class Step:
    """One command of the pipeline, run in its own folder, skipped when up to date.

    The folder holds a stamp with the command and the digests of its inputs (the
    pipeline's include :func:`code_digest`, so results of other code are never taken
    as up to date). When the stamp matches and ``done`` holds, the step is skipped;
    when it matches but the output is missing (an interrupted run), the same command
    runs again and resumes from its checkpoints; when it differs, the step starts in an
    empty folder and the old one is kept beside it as ``<folder>.previous`` (one
    generation: an older ``.previous`` is removed), so a code or settings change never
    deletes the last finished results.
    """

    def __init__(self, name, cmd, folder, done, inputs=None, progress=None):
        self.name = name
        self.cmd = [str(c) for c in cmd]
        self.folder = Path(folder)
        self.done = done
        self.inputs = inputs or {}
        self.progress = progress

    @property
    def printable(self):
        """The command as a shell line, paths relative to the repository root."""
        args = ["python"] + [rel(a) if os.path.isabs(a) else a for a in self.cmd[1:]]
        return shlex.join(args)

    def key(self):
        return json.dumps({"cmd": self.printable, "inputs": self.inputs}, sort_keys=True)

    def run(self, log_name="console.log"):
        """Runs (or skips) the step; returns ``"skipped"``, ``"ran"`` or ``"resumed"``."""
        stamp = self.folder / STAMP
        state = "ran"
        if stamp.is_file():
            if stamp.read_text() == self.key():
                if self.done():
                    print(f"  {self.name}: up to date ({rel(self.folder)})")
                    return "skipped"
                state = "resumed"
            else:
                previous = self.folder.with_name(self.folder.name + ".previous")
                if previous.exists():
                    shutil.rmtree(previous)
                self.folder.rename(previous)
                print(f"  {self.name}: its command, inputs or code changed; the previous "
                      f"results are kept in {rel(previous)}")
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(self.key())
        log = self.folder / log_name
        print(f"  {self.name}: {'resuming' if state == 'resumed' else 'running'} "
              f"(log: {rel(log)})\n    $ {self.printable}", flush=True)
        t0 = time.time()
        with open(log, "a", encoding="utf-8") as f:
            env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
            proc = subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                    env=env)
            try:
                if self.progress is None:
                    proc.wait()
                else:
                    self.progress.follow(proc, self.name)
            except BaseException:  # Ctrl-C, SIGTERM: stop the step too, not only the demo
                stop_child(proc)
                raise
        if proc.returncode != 0 or not self.done():
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise CaldError(
                f"{self.name} failed (exit {proc.returncode}); see {rel(log)}:\n    "
                + "\n    ".join(tail)
                + "\n  Run `make demo` again to resume from the last checkpoint."
            )
        print(f"  {self.name}: done in {time.time() - t0:.0f} s", flush=True)
        return state


class StepProgress:
    """Live progress of a training step, read from its ``steps.jsonl``: updates done out
    of the total, the latest loss terms and the time left.

    On a terminal, a tqdm bar; otherwise a plain line every ``every_s`` seconds.

    Example
    -------
    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "steps.jsonl"
    >>> _ = log.write_text('{"step": 10, "time": 1.0, "task": 2.5, "lr_model": 0.001}\\n')
    >>> StepProgress(log, total=40).latest()
    (10, {'task': 2.5})
    >>> StepProgress(log, total=40).line("teacher", 10, {"task": 2.5}, elapsed=20.0)
    'teacher: 10/40 updates (25 %), task 2.50, about 60 s left'
    """

    def __init__(self, step_log, total=None, poll_s=2.0, every_s=30.0):
        self.step_log = Path(step_log)
        self.total = int(total) if total else None
        self.poll_s, self.every_s = float(poll_s), float(every_s)

    def latest(self):
        """``(updates done, loss terms)`` of the last line of the step log."""
        try:
            with open(self.step_log, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                last = f.read().decode("utf-8", "replace").strip().splitlines()[-1]
            rec = json.loads(last)
        except (OSError, IndexError, ValueError):
            return 0, {}
        terms = {k: v for k, v in rec.items()
                 if k not in ("step", "time") and not k.startswith("lr_")
                 and isinstance(v, (int, float))}
        return int(rec.get("step", 0)), terms

    def line(self, name, done, terms, elapsed):
        """One plain progress line."""
        text = f"{name}: {done}"
        if self.total:
            text += f"/{self.total} updates ({100 * done / self.total:.0f} %)"
        else:
            text += " updates"
        text += "".join(f", {k} {v:.2f}" for k, v in terms.items())
        if self.total and done:
            left = elapsed * (self.total - done) / done
            text += f", about {left:.0f} s left" if left < 120 else \
                f", about {left / 60:.0f} min left"
        return text

    def follow(self, proc, name):
        """Shows the progress until ``proc`` ends."""
        t0 = time.time()
        tty = sys.stdout.isatty()
        bar = None
        if tty:
            from tqdm import tqdm

            bar = tqdm(total=self.total, desc=f"    {name}", unit="update", leave=False)
        shown = 0.0
        try:
            while proc.poll() is None:
                try:
                    proc.wait(timeout=self.poll_s)
                except subprocess.TimeoutExpired:
                    pass
                done, terms = self.latest()
                if bar is not None:
                    bar.update(done - bar.n)
                    bar.set_postfix({k: f"{v:.2f}" for k, v in terms.items()}, refresh=True)
                elif time.time() - shown >= self.every_s and done:
                    print("    " + self.line(name, done, terms, time.time() - t0), flush=True)
                    shown = time.time()
        finally:
            if bar is not None:
                bar.close()


def stop_child(proc, grace_s=10.0):
    """Terminates a step's process (killed after ``grace_s``); its checkpoints stay.

    Example
    -------
    >>> proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    >>> stop_child(proc)
    >>> proc.poll() is not None
    True
    """
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _exit_on_sigterm(signum, frame):
    # SystemExit unwinds through Step.run, which then stops the running step.
    sys.exit(128 + signum)


class Pipeline:
    """The demo stages over one data folder and one results folder."""

    def __init__(self, cfg, data_dir, results_dir, jobs=1, scale="small", seed=None):
        self.cfg = cfg
        self.scale = scale
        self.seed = seed
        self.data = Path(data_dir).resolve()
        self.results = Path(results_dir).resolve()
        self.jobs = jobs
        self.timings = {}
        self.code = code_digest()

    # ---------------------------------------------------------------- data
    @property
    def corpus(self):
        return self.data / "corpus"

    @property
    def manifests(self):
        return self.data / "manifests"

    def stage_corpus(self):
        """Synthesizes the LibriSpeech-format corpus (a no-op when it is up to date)."""
        from cald_speech.data.synth import format_summary, synthesize_librispeech

        summary = synthesize_librispeech(str(self.corpus), jobs=self.jobs,
                                         progress=False, **self.cfg["corpus"])
        print(format_summary(summary))
        print(summary["heldout_statement"])
        return summary

    @property
    def lm_path(self):
        return self.data / "lm" / "lm.arpa"

    def lm_step(self):
        """The demo's n-gram LM: the built-in LJ Speech and SLURP training sentences,
        the corpus's dev and test sentences left out (``cald-lm build``)."""
        from cald_speech.data.synth import default_data_dir

        text = default_data_dir() / "text"
        sources = [text / "ljspeech_sentences.tsv", text / "slurp_devel.jsonl"]
        held = [self.manifests / "dev-clean.csv", self.manifests / "test-clean.csv"]
        order = str(self.cfg["bench"].get("decoding", {}).get("lm_order", 4))
        cmd = [sys.executable, "-m", "cald_speech.lm.cli", "build", *sources, "--order", order,
               "--exclude", *held, "--output", self.lm_path]
        return Step("lm", cmd, self.lm_path.parent, done=lambda: self.lm_path.is_file(),
                    inputs={str(p): file_digest(p) for p in [*sources, *held]})

    def stage_manifests(self):
        """Writes the CSV manifests, the tokenizer and the n-gram LM."""
        from cald_speech.data.librispeech import prepare_librispeech
        from cald_speech.data.tokenizer import CharTokenizer

        summary = prepare_librispeech(str(self.corpus), str(self.manifests))
        CharTokenizer().save(str(self.manifests / "tokenizer.json"))
        print(f"  manifests: {rel(self.manifests)}")
        if self.cfg["bench"].get("decoding"):
            self.lm_step().run()
        return summary

    # ---------------------------------------------------------------- models
    @property
    def pretrained(self):
        return (ROOT / self.cfg["pretrained"]).resolve()

    def stage_pretrained(self):
        """Checks the offline starting model (built by ``tools/make_pretrained.sh``)."""
        cfg_file = self.pretrained / "config.json"
        if not cfg_file.is_file() or not (self.pretrained / "model.safetensors").is_file():
            raise CaldError(
                f"{rel(self.pretrained)}: the offline pretrained model is missing "
                f"(config.json + model.safetensors). Build it with "
                f"`bash tools/make_pretrained.sh` (about 3 h on 2 cores), or point "
                f"'pretrained' in {rel(DEFAULT_CONFIG)} to a local HF wav2vec2 folder."
            )
        print(f"  pretrained: {rel(self.pretrained)} "
              "(CNN fitted to log-mel features, then CTC-trained on 21.4 h of synthetic "
              "LJ Speech and SLURP sentences; not self-supervised)")

    def run_folder(self, name):
        return self.results / "runs" / name

    def _recipe_step(self, name, hparams, extra, inputs):
        folder = self.run_folder(name)
        cmd = [
            sys.executable, RECIPE / "train.py", RECIPE / "hparams" / hparams,
            "--data_folder", self.corpus,
            "--output_folder", folder,
            "--feature_cache_folder", self.results / "feature_cache",
            "--test_splits", "[dev-clean,test-clean]",
            *extra,
        ]
        inputs = dict(inputs, corpus=self.cfg["corpus"], code=self.code)
        opts = dict(zip(extra[::2], extra[1::2]))
        total = opts.get("--optimizer_step_limit") or opts.get("--total_updates")
        return Step(name, cmd, folder,
                    done=lambda: (folder / "model" / "cald_info.json").is_file(),
                    inputs=inputs, progress=StepProgress(folder / "steps.jsonl", total))

    def teacher_step(self):
        t = self.cfg["teacher"]
        return self._recipe_step(
            "teacher", "finetune.yaml",
            ["--model_source", self.pretrained, *overrides(self._seeded(t))],
            {"pretrained": file_digest(self.pretrained / "model.safetensors")},
        )

    def student_steps(self):
        teacher = self.run_folder("teacher") / "model"
        digest = file_digest(teacher / "model.safetensors")
        steps = []
        for name, opts in self.cfg["students"].items():
            opts = self._seeded(opts)
            mode = opts.get("mode", "hybrid")
            if mode in ("trajectory", "waypoint"):   # both start from the pretrained model
                src = ["--pretrained_source", self.pretrained]
                if mode == "waypoint":
                    src += ["--waypoint_dir", self.run_folder("teacher") / "waypoints"]
            else:
                src = ["--teacher_source", teacher]
            steps.append(self._recipe_step(
                name, "cald.yaml", [*src, *overrides(opts)], {"teacher": digest},
            ))
        return steps

    def _seeded(self, opts):
        """Run options with the pipeline's seed, when one was given."""
        return dict(opts, seed=self.seed) if self.seed is not None else dict(opts)

    def stage_teacher(self):
        self.teacher_step().run()

    def stage_students(self):
        for step in self.student_steps():
            step.run()

    # ---------------------------------------------------------------- bench
    def bench_steps(self):
        b = self.cfg["bench"]
        teacher = self.run_folder("teacher") / "model"
        test_csv = self.manifests / "test-clean.csv"
        bench = self.results / "bench"
        digests = {name: file_digest(self.run_folder(name) / "model" / "model.safetensors")
                   for name in ["teacher", *self.cfg["students"]]}
        digests["code"] = self.code
        cli = [sys.executable, "-m", "cald_speech.bench.cli"]
        steps = []
        for name in self.cfg["students"]:
            out = bench / f"wer_{name}"
            steps.append(Step(
                f"bench wer {name}",
                cli + ["wer", "--teacher", teacher, "--student",
                       self.run_folder(name) / "model", "--csv", test_csv, "--output-dir", out],
                out, done=lambda out=out: (out / "wer.json").is_file(), inputs=digests,
            ))
        main = self.cfg["main_student"]
        out = bench / "speed"
        steps.append(Step(
            "bench speed",
            cli + ["speed", "--model", teacher, self.run_folder(main) / "model",
                   "--minutes", *(str(m) for m in b["speed_minutes"]),
                   "--output-dir", out],
            out, done=lambda: (out / "speed.json").is_file(), inputs=digests,
        ))
        dec = b.get("decoding")
        if dec:  # greedy vs beam vs beam + LM on the same posteriors, weights from dev
            out_d = bench / "decoding"
            models = [teacher, *(self.run_folder(n) / "model" for n in self.cfg["students"])]
            cmd = cli + ["decoding", "--model", *models,
                         "--csv", test_csv, "--dev-csv", self.manifests / "dev-clean.csv",
                         "--lm", self.lm_path, "--beam-size", str(dec.get("beam_size", 16)),
                         "--output-dir", out_d]
            if dec.get("lm_weights"):
                cmd += ["--lm-weights", *map(str, dec["lm_weights"])]
            if dec.get("word_bonuses"):
                cmd += ["--word-bonuses", *map(str, dec["word_bonuses"])]
            steps.append(Step("bench decoding", cmd, out_d,
                              done=lambda: (out_d / "decoding.json").is_file(),
                              inputs={**digests, "lm": file_digest(self.lm_path)}))
        lf = bench / "longform"
        steps.append(Step(
            "bench longform",
            cli + ["longform", "--teacher", teacher, "--student",
                   self.run_folder(main) / "model", "--csv", test_csv,
                   "--minutes", str(b["longform_minutes"]), "--window-s",
                   str(b.get("window_s", 30)), "--output-dir", lf],
            lf, done=lambda: (lf / "longform.json").is_file(), inputs=digests,
        ))
        return steps

    def all_steps(self):
        """Every command of the pipeline, in order (the report lists them)."""
        lm = [self.lm_step()] if self.cfg["bench"].get("decoding") else []
        return [*lm, self.teacher_step(), *self.student_steps(), *self.bench_steps()]

    def stage_bench(self):
        for step in self.bench_steps():
            step.run()

    # ---------------------------------------------------------------- report
    def stage_report(self):
        from cald_speech.demo.report import write_report

        path = write_report(self)
        print(f"  report: {rel(path)}")
        return path

    def run(self, stages=STAGES):
        """Runs the stages in order; returns the report path (or ``None``)."""
        report = None
        for i, stage in enumerate(stages, 1):
            print(f"== stage {i}/{len(stages)}: {stage}", flush=True)
            t0 = time.time()
            result = getattr(self, f"stage_{stage}")()
            self.timings[stage] = time.time() - t0
            if stage == "report":
                report = result
        return report


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="small", help="a scale of hparams/demo.yaml")
    p.add_argument("--data", "--out", dest="data", default=str(ROOT / "data" / "demo"),
                   help="where the corpus and manifests go (default data/demo)")
    p.add_argument("--results", default=str(ROOT / "results" / "demo"),
                   help="where runs, benchmarks and the report go (default results/demo)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the teacher and students (default: the scale's)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)}")
    return add_version(p)


def main(argv=None):
    """Runs the demo pipeline; returns the exit status."""
    args, status = parse(build_parser(), argv)
    if args is None:
        return status
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    t0 = time.time()
    try:
        stages = [s for s in args.stages.split(",") if s]
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise ConfigError(f"--stages: unknown stage(s) {unknown}; choose from "
                              f"{list(STAGES)}")
        cfg = load_scale(args.scale, args.config)
        pipe = Pipeline(cfg, args.data, args.results, args.jobs, args.scale, args.seed)
        report = pipe.run(stages)
    except CaldError as exc:
        return fail(PROG, exc)
    print(f"demo finished in {time.time() - t0:.0f} s")
    if report:
        print(f"report: {report}")
    return 0
