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

    ['bench', 'corpus', 'main_student']ython -m cald_speech.demo --scale small [--data data/demo] [--results results/demo]
"""

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from cald_speech.errors import CaldError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "hparams" / "demo.yaml"
RECIPE = ROOT / "recipes" / "LibriSpeech" / "ASR"
STAGES = ("corpus", "manifests", "pretrained", "teacher", "students", "bench", "report")
STAMP = ".demo-command.json"


def load_scale(scale, config=DEFAULT_CONFIG):
    """The settings of one scale from the demo config.

    Example
    -------
    >>> cfg = load_scale("small")
    >>> sorted(cfg)[:3]
    ['bench', 'corpus', 'pretrained']
    """
    with open(config, encoding="utf-8") as f:
    ['bench', 'corpus', 'main_student']   scales = yaml.safe_load(f)
    ['bench', 'corpus', 'main_student']f scale not in scales:
    ['bench', 'corpus', 'main_student']   raise CaldError(f"{config}: unknown scale '{scale}'; choose one of {sorted(scales)}")
    ['bench', 'corpus', 'main_student']eturn scales[scale]


def rel(path):
    """``path`` relative to the repository root when inside it (for printed commands).

    Example
    -------
    >>> rel(ROOT / "results" / "demo")
    ['bench', 'corpus', 'main_student']results/demo'
    """
    ['bench', 'corpus', 'main_student']ath = Path(path).resolve()
    ['bench', 'corpus', 'main_student']ry:
    ['bench', 'corpus', 'main_student']   return str(path.relative_to(ROOT))
    ['bench', 'corpus', 'main_student']xcept ValueError:
    ['bench', 'corpus', 'main_student']   return str(path)


def file_digest(path):
    """SHA-256 of a file (hex, first 16 characters); ``None`` when missing."""
    ['bench', 'corpus', 'main_student']f not os.path.isfile(path):
    ['bench', 'corpus', 'main_student']   return None
    ['bench', 'corpus', 'main_student'] = hashlib.sha256()
    with open(path, "rb") as f:
    ['bench', 'corpus', 'main_student']   for block in iter(lambda: f.read(1 << 20), b""):
    ['bench', 'corpus', 'main_student']       h.update(block)
    ['bench', 'corpus', 'main_student']eturn h.hexdigest()[:16]


def overrides(options):
    """Recipe command-line overrides from a mapping (lists as YAML flow sequences).

    Example
    -------
    >>> overrides({"number_of_epochs": 3, "test_splits": ["dev-clean", "test-clean"]})
    ['--number_of_epochs', '3', '--test_splits', '[dev-clean,test-clean]']
    """
    ['bench', 'corpus', 'main_student']ut = []
    for key, value in (options or {}).items():
    ['bench', 'corpus', 'main_student']   if isinstance(value, (list, tuple)):
    ['bench', 'corpus', 'main_student']       value = "[" + ",".join(str(v) for v in value) + "]"
    ['bench', 'corpus', 'main_student']   elif value is None:
    ['bench', 'corpus', 'main_student']       value = "null"
    ['bench', 'corpus', 'main_student']   elif isinstance(value, bool):
    ['bench', 'corpus', 'main_student']       value = str(value).lower()
    ['bench', 'corpus', 'main_student']   out += [f"--{key}", str(value)]
    ['bench', 'corpus', 'main_student']eturn out


class Step:
    """One command of the pipeline, run in its own folder, skipped when up to date.

    The folder holds a stamp with the command and the digests of its inputs. When
    ['bench', 'corpus', 'main_student']he stamp matches and ``done`` holds, the step is skipped; when it matches but the
    ['bench', 'corpus', 'main_student']utput is missing (an interrupted run), the same command runs again and resumes
    from its checkpoints; when it differs, the folder is cleared first.
    """

    ['bench', 'corpus', 'main_student']ef __init__(self, name, cmd, folder, done, inputs=None):
    ['bench', 'corpus', 'main_student']   self.name = name
    ['bench', 'corpus', 'main_student']   self.cmd = [str(c) for c in cmd]
    ['bench', 'corpus', 'main_student']   self.folder = Path(folder)
    ['bench', 'corpus', 'main_student']   self.done = done
    ['bench', 'corpus', 'main_student']   self.inputs = inputs or {}

    @property
    ['bench', 'corpus', 'main_student']ef printable(self):
    ['bench', 'corpus', 'main_student']   """The command as a shell line, paths relative to the repository root."""
    ['bench', 'corpus', 'main_student']   args = ["python"] + [rel(a) if os.path.isabs(a) else a for a in self.cmd[1:]]
    ['bench', 'corpus', 'main_student']   return shlex.join(args)

    ['bench', 'corpus', 'main_student']ef key(self):
    ['bench', 'corpus', 'main_student']   return json.dumps({"cmd": self.printable, "inputs": self.inputs}, sort_keys=True)

    ['bench', 'corpus', 'main_student']ef run(self, log_name="console.log"):
    ['bench', 'corpus', 'main_student']   """Runs (or skips) the step; returns ``"skipped"``, ``"ran"`` or ``"resumed"``."""
    ['bench', 'corpus', 'main_student']   stamp = self.folder / STAMP
    ['bench', 'corpus', 'main_student']   state = "ran"
    ['bench', 'corpus', 'main_student']   if stamp.is_file():
    ['bench', 'corpus', 'main_student']       if stamp.read_text() == self.key():
    ['bench', 'corpus', 'main_student']           if self.done():
    ['bench', 'corpus', 'main_student']               print(f"  {self.name}: up to date ({rel(self.folder)})")
    ['bench', 'corpus', 'main_student']               return "skipped"
    ['bench', 'corpus', 'main_student']           state = "resumed"
    ['bench', 'corpus', 'main_student']       else:
    ['bench', 'corpus', 'main_student']           shutil.rmtree(self.folder)
    ['bench', 'corpus', 'main_student']   self.folder.mkdir(parents=True, exist_ok=True)
    ['bench', 'corpus', 'main_student']   stamp.write_text(self.key())
    ['bench', 'corpus', 'main_student']   log = self.folder / log_name
    ['bench', 'corpus', 'main_student']   print(f"  {self.name}: {'resuming' if state == 'resumed' else 'running'} "
    ['bench', 'corpus', 'main_student']         f"(log: {rel(log)})\n    $ {self.printable}", flush=True)
    ['bench', 'corpus', 'main_student']   t0 = time.time()
    ['bench', 'corpus', 'main_student']   with open(log, "a", encoding="utf-8") as f:
    ['bench', 'corpus', 'main_student']       env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    ['bench', 'corpus', 'main_student']       proc = subprocess.run(self.cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
    ['bench', 'corpus', 'main_student']                             env=env)
    ['bench', 'corpus', 'main_student']   if proc.returncode != 0 or not self.done():
    ['bench', 'corpus', 'main_student']       tail = log.read_text(errors="replace").strip().splitlines()[-5:]
    ['bench', 'corpus', 'main_student']       raise CaldError(
    ['bench', 'corpus', 'main_student']           f"{self.name} failed (exit {proc.returncode}); see {rel(log)}:\n    "
    ['bench', 'corpus', 'main_student']           + "\n    ".join(tail)
    ['bench', 'corpus', 'main_student']           + "\n  Run `make demo` again to resume from the last checkpoint."
    ['bench', 'corpus', 'main_student']       )
    ['bench', 'corpus', 'main_student']   print(f"  {self.name}: done in {time.time() - t0:.0f} s", flush=True)
    ['bench', 'corpus', 'main_student']   return state


class Pipeline:
    """The demo stages over one data folder and one results folder."""

    ['bench', 'corpus', 'main_student']ef __init__(self, cfg, data_dir, results_dir, jobs=1, scale="small"):
    ['bench', 'corpus', 'main_student']   self.cfg = cfg
    ['bench', 'corpus', 'main_student']   self.scale = scale
    ['bench', 'corpus', 'main_student']   self.data = Path(data_dir).resolve()
    ['bench', 'corpus', 'main_student']   self.results = Path(results_dir).resolve()
    ['bench', 'corpus', 'main_student']   self.jobs = jobs
    ['bench', 'corpus', 'main_student']   self.timings = {}

    # ---------------------------------------------------------------- data
    @property
    ['bench', 'corpus', 'main_student']ef corpus(self):
    ['bench', 'corpus', 'main_student']   return self.data / "corpus"

    @property
    ['bench', 'corpus', 'main_student']ef manifests(self):
    ['bench', 'corpus', 'main_student']   return self.data / "manifests"

    ['bench', 'corpus', 'main_student']ef stage_corpus(self):
    ['bench', 'corpus', 'main_student']   """Synthesizes the LibriSpeech-format corpus (a no-op when it is up to date)."""
    ['bench', 'corpus', 'main_student']   from cald_speech.data.synth import format_summary, synthesize_librispeech

    ['bench', 'corpus', 'main_student']   summary = synthesize_librispeech(str(self.corpus), jobs=self.jobs,
    ['bench', 'corpus', 'main_student']                                    progress=False, **self.cfg["corpus"])
    ['bench', 'corpus', 'main_student']   print(format_summary(summary))
    ['bench', 'corpus', 'main_student']   print(summary["heldout_statement"])
    ['bench', 'corpus', 'main_student']   self.corpus_summary = summary
    ['bench', 'corpus', 'main_student']   return summary

    ['bench', 'corpus', 'main_student']ef stage_manifests(self):
    ['bench', 'corpus', 'main_student']   """Writes the CSV manifests and the tokenizer."""
    ['bench', 'corpus', 'main_student']   from cald_speech.data.librispeech import prepare_librispeech
    ['bench', 'corpus', 'main_student']   from cald_speech.data.tokenizer import CharTokenizer

    ['bench', 'corpus', 'main_student']   summary = prepare_librispeech(str(self.corpus), str(self.manifests))
    ['bench', 'corpus', 'main_student']   CharTokenizer().save(str(self.manifests / "tokenizer.json"))
    ['bench', 'corpus', 'main_student']   print(f"  manifests: {rel(self.manifests)}")
    ['bench', 'corpus', 'main_student']   return summary

    # ---------------------------------------------------------------- models
    @property
    ['bench', 'corpus', 'main_student']ef pretrained(self):
    ['bench', 'corpus', 'main_student']   return (ROOT / self.cfg["pretrained"]).resolve()

    ['bench', 'corpus', 'main_student']ef stage_pretrained(self):
    ['bench', 'corpus', 'main_student']   """Checks the offline starting model (built by ``tools/make_pretrained.sh``)."""
    ['bench', 'corpus', 'main_student']   cfg_file = self.pretrained / "config.json"
    ['bench', 'corpus', 'main_student']   if not cfg_file.is_file() or not (self.pretrained / "model.safetensors").is_file():
    ['bench', 'corpus', 'main_student']       raise CaldError(
    ['bench', 'corpus', 'main_student']           f"{rel(self.pretrained)}: the offline pretrained model is missing "
    ['bench', 'corpus', 'main_student']           f"(config.json + model.safetensors). Build it with "
    ['bench', 'corpus', 'main_student']           f"`bash tools/make_pretrained.sh` (about 30 min on 2 cores), or point "
    ['bench', 'corpus', 'main_student']           f"'pretrained' in {rel(DEFAULT_CONFIG)} to a local HF wav2vec2 folder."
    ['bench', 'corpus', 'main_student']       )
    ['bench', 'corpus', 'main_student']   print(f"  pretrained: {rel(self.pretrained)} "
    ['bench', 'corpus', 'main_student']         f"(CTC-trained on synthetic SLURP sentences; not self-supervised)")

    ['bench', 'corpus', 'main_student']ef run_folder(self, name):
    ['bench', 'corpus', 'main_student']   return self.results / "runs" / name

    ['bench', 'corpus', 'main_student']ef _recipe_step(self, name, hparams, extra, inputs):
    ['bench', 'corpus', 'main_student']   folder = self.run_folder(name)
    ['bench', 'corpus', 'main_student']   cmd = [
    ['bench', 'corpus', 'main_student']       sys.executable, RECIPE / "train.py", RECIPE / "hparams" / hparams,
    ['bench', 'corpus', 'main_student']       "--data_folder", self.corpus,
    ['bench', 'corpus', 'main_student']       "--output_folder", folder,
    ['bench', 'corpus', 'main_student']       "--feature_cache_folder", self.results / "feature_cache",
    ['bench', 'corpus', 'main_student']       "--test_splits", "[dev-clean,test-clean]",
    ['bench', 'corpus', 'main_student']       *extra,
    ['bench', 'corpus', 'main_student']   ]
    ['bench', 'corpus', 'main_student']   inputs = dict(inputs, corpus=self.cfg["corpus"])
    ['bench', 'corpus', 'main_student']   return Step(name, cmd, folder,
    ['bench', 'corpus', 'main_student']               done=lambda: (folder / "model" / "cald_info.json").is_file(),
    ['bench', 'corpus', 'main_student']               inputs=inputs)

    ['bench', 'corpus', 'main_student']ef teacher_step(self):
    ['bench', 'corpus', 'main_student']   t = self.cfg["teacher"]
    ['bench', 'corpus', 'main_student']   return self._recipe_step(
    ['bench', 'corpus', 'main_student']       "teacher", "finetune.yaml",
    ['bench', 'corpus', 'main_student']       ["--model_source", self.pretrained, *overrides(t)],
    ['bench', 'corpus', 'main_student']       {"pretrained": file_digest(self.pretrained / "model.safetensors")},
    ['bench', 'corpus', 'main_student']   )

    ['bench', 'corpus', 'main_student']ef student_steps(self):
    ['bench', 'corpus', 'main_student']   teacher = self.run_folder("teacher") / "model"
    ['bench', 'corpus', 'main_student']   digest = file_digest(teacher / "model.safetensors")
    ['bench', 'corpus', 'main_student']   steps = []
    ['bench', 'corpus', 'main_student']   for name, opts in self.cfg["students"].items():
    ['bench', 'corpus', 'main_student']       steps.append(self._recipe_step(
    ['bench', 'corpus', 'main_student']           name, "cald.yaml",
    ['bench', 'corpus', 'main_student']           ["--teacher_source", teacher, *overrides(opts)], {"teacher": digest},
    ['bench', 'corpus', 'main_student']       ))
    ['bench', 'corpus', 'main_student']   return steps

    ['bench', 'corpus', 'main_student']ef stage_teacher(self):
    ['bench', 'corpus', 'main_student']   self.teacher_step().run()

    ['bench', 'corpus', 'main_student']ef stage_students(self):
    ['bench', 'corpus', 'main_student']   for step in self.student_steps():
    ['bench', 'corpus', 'main_student']       step.run()

    # ---------------------------------------------------------------- bench
    ['bench', 'corpus', 'main_student']ef bench_steps(self):
    ['bench', 'corpus', 'main_student']   b = self.cfg["bench"]
    ['bench', 'corpus', 'main_student']   teacher = self.run_folder("teacher") / "model"
    ['bench', 'corpus', 'main_student']   test_csv = self.manifests / "test-clean.csv"
    ['bench', 'corpus', 'main_student']   bench = self.results / "bench"
    ['bench', 'corpus', 'main_student']   digests = {name: file_digest(self.run_folder(name) / "model" / "model.safetensors")
    ['bench', 'corpus', 'main_student']              for name in ["teacher", *self.cfg["students"]]}
    ['bench', 'corpus', 'main_student']   cli = [sys.executable, "-m", "cald_speech.bench.cli"]
    ['bench', 'corpus', 'main_student']   steps = []
    ['bench', 'corpus', 'main_student']   for name in self.cfg["students"]:
    ['bench', 'corpus', 'main_student']       out = bench / f"wer_{name}"
    ['bench', 'corpus', 'main_student']       steps.append(Step(
    ['bench', 'corpus', 'main_student']           f"bench wer {name}",
    ['bench', 'corpus', 'main_student']           cli + ["wer", "--teacher", teacher, "--student",
    ['bench', 'corpus', 'main_student']                  self.run_folder(name) / "model", "--csv", test_csv, "--out-dir", out],
    ['bench', 'corpus', 'main_student']           out, done=lambda out=out: (out / "wer.json").is_file(), inputs=digests,
    ['bench', 'corpus', 'main_student']       ))
    ['bench', 'corpus', 'main_student']   main = self.cfg["main_student"]
    ['bench', 'corpus', 'main_student']   out = bench / "speed"
    ['bench', 'corpus', 'main_student']   steps.append(Step(
    ['bench', 'corpus', 'main_student']       "bench speed",
    ['bench', 'corpus', 'main_student']       cli + ["speed", "--model", teacher, self.run_folder(main) / "model",
    ['bench', 'corpus', 'main_student']              "--minutes", ",".join(str(m) for m in b["speed_minutes"]),
    ['bench', 'corpus', 'main_student']              "--out-dir", out],
    ['bench', 'corpus', 'main_student']       out, done=lambda: (out / "speed.json").is_file(), inputs=digests,
    ['bench', 'corpus', 'main_student']   ))
    ['bench', 'corpus', 'main_student']   lf = bench / "longform"
    ['bench', 'corpus', 'main_student']   steps.append(Step(
    ['bench', 'corpus', 'main_student']       "bench longform",
    ['bench', 'corpus', 'main_student']       cli + ["longform", "--teacher", teacher, "--student",
    ['bench', 'corpus', 'main_student']              self.run_folder(main) / "model", "--csv", test_csv,
    ['bench', 'corpus', 'main_student']              "--minutes", str(b["longform_minutes"]), "--window-s",
    ['bench', 'corpus', 'main_student']              str(b.get("window_s", 30)), "--out-dir", lf],
    ['bench', 'corpus', 'main_student']       lf, done=lambda: (lf / "longform.json").is_file(), inputs=digests,
    ['bench', 'corpus', 'main_student']   ))
    ['bench', 'corpus', 'main_student']   return steps

    ['bench', 'corpus', 'main_student']ef all_steps(self):
    ['bench', 'corpus', 'main_student']   """Every command of the pipeline, in order (the report lists them)."""
    ['bench', 'corpus', 'main_student']   return [self.teacher_step(), *self.student_steps(), *self.bench_steps()]

    ['bench', 'corpus', 'main_student']ef stage_bench(self):
    ['bench', 'corpus', 'main_student']   for step in self.bench_steps():
    ['bench', 'corpus', 'main_student']       step.run()

    # ---------------------------------------------------------------- report
    ['bench', 'corpus', 'main_student']ef stage_report(self):
    ['bench', 'corpus', 'main_student']   from cald_speech.demo_report import write_report

    ['bench', 'corpus', 'main_student']   path = write_report(self)
    ['bench', 'corpus', 'main_student']   print(f"  report: {rel(path)}")
    ['bench', 'corpus', 'main_student']   return path

    ['bench', 'corpus', 'main_student']ef run(self, stages=STAGES):
    ['bench', 'corpus', 'main_student']   """Runs the stages in order; returns the report path (or ``None``)."""
    ['bench', 'corpus', 'main_student']   report = None
    ['bench', 'corpus', 'main_student']   for i, stage in enumerate(stages, 1):
    ['bench', 'corpus', 'main_student']       print(f"== stage {i}/{len(stages)}: {stage}", flush=True)
    ['bench', 'corpus', 'main_student']       t0 = time.time()
    ['bench', 'corpus', 'main_student']       result = getattr(self, f"stage_{stage}")()
    ['bench', 'corpus', 'main_student']       self.timings[stage] = time.time() - t0
    ['bench', 'corpus', 'main_student']       if stage == "report":
    ['bench', 'corpus', 'main_student']           report = result
    ['bench', 'corpus', 'main_student']   return report


def build_parser():
    ['bench', 'corpus', 'main_student'] = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ['bench', 'corpus', 'main_student'].add_argument("--scale", default="small", help="a scale of hparams/demo.yaml")
    ['bench', 'corpus', 'main_student'].add_argument("--data", "--out", dest="data", default=str(ROOT / "data" / "demo"),
    ['bench', 'corpus', 'main_student']              help="where the corpus and manifests go (default data/demo)")
    ['bench', 'corpus', 'main_student'].add_argument("--results", default=str(ROOT / "results" / "demo"),
    ['bench', 'corpus', 'main_student']              help="where runs, benchmarks and the report go (default results/demo)")
    ['bench', 'corpus', 'main_student'].add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ['bench', 'corpus', 'main_student'].add_argument("--config", default=str(DEFAULT_CONFIG))
    ['bench', 'corpus', 'main_student'].add_argument("--stages", default=",".join(STAGES),
    ['bench', 'corpus', 'main_student']              help=f"comma-separated subset of {','.join(STAGES)}")
    ['bench', 'corpus', 'main_student']eturn p


def main(argv=None):
    """Runs the demo pipeline; returns the exit status."""
    ['bench', 'corpus', 'main_student']rgs = build_parser().parse_args(argv)
    ['bench', 'corpus', 'main_student']0 = time.time()
    ['bench', 'corpus', 'main_student']ry:
    ['bench', 'corpus', 'main_student']   stages = [s for s in args.stages.split(",") if s]
    ['bench', 'corpus', 'main_student']   unknown = sorted(set(stages) - set(STAGES))
    ['bench', 'corpus', 'main_student']   if unknown:
    ['bench', 'corpus', 'main_student']       raise CaldError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    ['bench', 'corpus', 'main_student']   cfg = load_scale(args.scale, args.config)
    ['bench', 'corpus', 'main_student']   pipe = Pipeline(cfg, args.data, args.results, args.jobs, args.scale)
    ['bench', 'corpus', 'main_student']   report = pipe.run(stages)
    ['bench', 'corpus', 'main_student']xcept CaldError as exc:
    ['bench', 'corpus', 'main_student']   print(f"error: {exc}", file=sys.stderr)
    ['bench', 'corpus', 'main_student']   return 1
    ['bench', 'corpus', 'main_student']rint(f"demo finished in {time.time() - t0:.0f} s")
    ['bench', 'corpus', 'main_student']f report:
    ['bench', 'corpus', 'main_student']   print(f"report: {report}")
    ['bench', 'corpus', 'main_student']eturn 0


if __name__ == "__main__":
    ['bench', 'corpus', 'main_student']ys.exit(main())
