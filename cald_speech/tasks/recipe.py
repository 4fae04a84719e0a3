"""The one recipe driver: ``python recipes/<Corpus>/<task>/train.py hparams.yaml``.

:func:`run_recipe` reads the hparams (YAML and command-line errors fail before anything
is built), prepares the data, builds the model and teacher for the chosen ``mode``
(:mod:`cald_speech.tasks.modes`), trains with the task's distillation Brain, evaluates
every test split with the best checkpoint and packages the model for inference in
``<output_folder>/model``. Everything a run writes goes under its ``output_folder``
(the CNN feature cache too, unless ``feature_cache_folder`` names a shared one). A
finished run started again tests only what it has not tested yet
(``<output_folder>/test_results.json``: split, checkpoint and test settings), so its
``train_log.txt`` keeps one line per test. A task (:class:`Task`: ASR in
:mod:`cald_speech.tasks.asr`, intents in :mod:`cald_speech.tasks.intent`) supplies its
keys, defaults, models, datasets and Brain; everything else is shared.
"""

import gc
import json
import logging
import os
import random
import re
import sys

import numpy as np
import ruamel.yaml
import speechbrain as sb
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml

from cald_speech.cli import quiet
from cald_speech.data.pipeline import dynamic_batching, epoch_sampler
from cald_speech.distill.brain import RANK_KEY
from cald_speech.errors import CaldError, ConfigError
from cald_speech.features import FeatureCache
from cald_speech.student import package_model
from cald_speech.tasks.hparams import check_hparams_keys, check_types, yaml_error
from cald_speech.tasks.run_options import parse_run_options, run_option_help, settle_intervals

logger = logging.getLogger(__name__)

#: Keys every recipe reads (typos of these fail early); a task adds its own.
COMMON_KEYS = {
    "seed", "mode", "data_folder", "data_format", "output_folder", "save_folder",
    "manifest_folder", "train_splits", "valid_splits", "test_splits", "text_column",
    "slurp_recording", "model_source", "model_config", "model_family",
    "teacher_source", "student_source", "pretrained_source", "waypoint_dir", "waypoint_pace",
    "waypoint_every", "cache_features", "train_feature_encoder",
    "feature_cache_folder",
    "number_of_epochs", "batch_size", "dynamic_batching", "max_batch_seconds",
    "num_buckets", "sorting", "max_duration", "min_duration", "num_workers",
    "encoder_opt_class", "head_opt_class", "teacher_encoder_opt_class",
    "teacher_head_opt_class", "teacher_encoder_lr_schedule", "teacher_head_lr_schedule",
    "encoder_lr_schedule", "lr_teacher_encoder", "lr_teacher_head",
    "head_lr_schedule", "epoch_counter", "train_logger",
    "checkpointer", "step_log", "log_every", "alpha_layer", "alpha_logit",
    "kd_temperature", "layer_indices", "layer_weights", "spec_augment_layer_loss",
    "mixer", "init",
    "keep_attention", "switch_step", "logit_kd_after_switch", "teacher_update_every",
    "package_folder", "max_grad_norm", "precision", "optimizer_step_limit",
    "ckpt_interval_minutes", "ckpt_interval_steps", "find_unused_parameters",
    "device", "distributed_backend", "lr_encoder", "lr_head", "warmup_updates",
    "total_updates", "lr_decay", "max_bad_fraction", "bad_items_file", "max_nonfinite_steps",
}

#: Defaults of the options every recipe reads (stated once; a task adds its own).
RECIPE_DEFAULTS = {
    "data_format": "librispeech",
    "slurp_recording": "all",
    "max_duration": None,
    "min_duration": 0.0,
    "sorting": "ascending",
    "num_workers": 0,
    "dynamic_batching": False,
    "num_buckets": 20,
    "cache_features": True,
    "package_folder": None,
}


class Task:
    """What a task adds to :func:`run_recipe` (subclass it; one instance per run).

    Attributes
    ----------
    keys : set of str
        hparams keys the task reads (typos of these fail early).
    defaults : dict
        The task's option defaults, on top of :data:`RECIPE_DEFAULTS`.
    brain_class : type
        The task's :class:`~cald_speech.distill.brain.DistillBrain`.
    """

    keys = COMMON_KEYS
    defaults = {}
    brain_class = None

    def modes(self, hp):
        """The modes the loaded hparams file can run (its source keys decide).

        Example
        -------
        >>> Task().modes({"mode": "hybrid", "teacher_source": None})
        ('unguided', 'target', 'hybrid')
        >>> Task().modes({"mode": "finetune", "model_config": "tiny.yaml"})
        ('finetune',)
        """
        from cald_speech.tasks.modes import modes_of

        return modes_of(hp)

    def check_mode(self, hp, hparams_file):
        """Raises ConfigError unless ``hp["mode"]`` is one of :meth:`modes`."""
        modes = self.modes(hp)
        mode = hp.get("mode")
        if mode not in modes:
            import difflib

            close = difflib.get_close_matches(str(mode), modes, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{os.path.basename(hparams_file)}: unknown mode '{mode}'{hint};"
                              f" this file runs: {', '.join(modes)}")

    def check(self, hp):
        """Checks the task's options before anything is built."""

    def models(self, hp, csvs):
        """``(model, teacher or None, guidance or None, waypoint teacher loader or None)``."""
        raise NotImplementedError

    def datasets(self, hp, csvs, model):
        """``(train, valid, {test split: (dataset, extra results)})``."""
        raise NotImplementedError

    def before_fit(self, hp, model):
        """Anything to do once the model is built and before training starts."""

    def package(self, hp):
        """``(tokenizer or None, extra info)`` saved with the packaged model."""
        return None, {}


def run_recipe(task, argv):
    """Runs a recipe for ``task`` with the command line ``argv``; returns the test results.

    Returns
    -------
    dict
        Per test split: the task's metrics, the mean of every loss term and the task's
        extra counts.
    """
    hp, run_opts = load_recipe_hparams(argv, task.keys, task.check_mode)
    for key, value in {**RECIPE_DEFAULTS, **task.defaults}.items():
        hp.setdefault(key, value)
    task.check(hp)
    if run_opts["test_only"] and hp["checkpointer"].find_checkpoint() is None:
        raise ConfigError(f"--test_only: no checkpoint in {hp['save_folder']} (fix: train "
                          "first, or give the --output_folder of a trained run)")
    csvs = prepare_manifests(hp)
    model, teacher, guidance, loader = task.models(hp, csvs)
    train, valid, tests = task.datasets(hp, csvs, model)
    task.before_fit(hp, model)
    hp["checkpointer"].add_recoverable("model", model)
    cache = FeatureCache(hp["feature_cache_folder"]) if hp["cache_features"] else None
    brain_hp = {**hp, "guidance": guidance, "feature_cache": cache, "teacher_loader": loader}
    brain = task.brain_class(
        modules={"model": model}, hparams=brain_hp, teacher=teacher,
        run_opts=run_opts, checkpointer=hp["checkpointer"],
    )
    if not run_opts["test_only"] and not _step_limit_reached(brain, hp["checkpointer"]):
        brain.fit(
            hp["epoch_counter"], train, valid,
            train_loader_kwargs=loader_opts(hp, train, True),
            valid_loader_kwargs=loader_opts(hp, valid, False),
        )
    best = {f"{brain.best_metric()[1]}_key": RANK_KEY}
    results = {}
    tested = TestedSplits(hp, hp["checkpointer"].find_checkpoint(**best), csvs)
    for split, (ds, extra) in tests.items():
        if tested.done(split):
            logger.info("%s: already tested with this checkpoint and these settings (%s); "
                        "not tested again", split, tested.path)
            results[split] = tested.results(split)
            continue
        stats = brain.evaluate_split(split, ds, test_loader_kwargs=loader_opts(hp, ds, False),
                                     **best)
        results[split] = {**stats, **extra}
        if sb.utils.distributed.if_main_process():
            tested.add(split, results[split])
    if sb.utils.distributed.if_main_process():
        tokenizer, info = task.package(hp)
        folder = hp["package_folder"] or os.path.join(hp["output_folder"], "model")
        package_model(
            brain.modules.model, folder, tokenizer,
            info={"mode": hp["mode"], "updates": brain.optimizer_step, "results": results,
                  "bad_items": brain.bad_items_total, **info},
        )
        logger.info("packaged model: %s", folder)
    return results


#: hparams that change a test's result, beside the checkpoint (see :class:`TestedSplits`).
TEST_SETTINGS = ("beam_size", "beam_engine", "lm", "lm_weight", "word_bonus", "precision",
                 "text_column", "normalize_text", "max_duration", "min_duration", "batch_size")


class TestedSplits:
    """The test splits a run has evaluated, with which checkpoint and settings.

    ``<output_folder>/test_results.json`` holds, per split, the checkpoint tested (its
    folder name), the settings of :data:`TEST_SETTINGS`, the test manifest's size and
    time, and the results. A split whose entry matches is not tested again.

    Example
    -------
    >>> import tempfile
    >>> hp = {"output_folder": tempfile.mkdtemp(), "beam_size": None}
    >>> rec = TestedSplits(hp, None, {})
    >>> rec.done("test")  # no checkpoint: always tested
    False
    """

    def __init__(self, hp, checkpoint, csvs):
        self.path = os.path.join(hp["output_folder"], "test_results.json")
        self.checkpoint = None if checkpoint is None else os.path.basename(checkpoint.path)
        self.settings = {k: None if hp.get(k) is None else str(hp[k])
                         for k in TEST_SETTINGS if k in hp}
        self.csvs = csvs
        try:
            with open(self.path, encoding="utf-8") as f:
                self.entries = json.load(f)
        except (OSError, ValueError):
            self.entries = {}
        if not isinstance(self.entries, dict):
            self.entries = {}

    def _key(self, split):
        csv = self.csvs.get(split)
        stat = os.stat(csv) if csv and os.path.isfile(csv) else None
        return {"checkpoint": self.checkpoint, "settings": self.settings,
                "manifest": None if stat is None else [stat.st_size, stat.st_mtime_ns]}

    def done(self, split):
        """Whether ``split`` was tested with this checkpoint and these settings."""
        entry = self.entries.get(split)
        return (self.checkpoint is not None and isinstance(entry, dict)
                and all(entry.get(k) == v for k, v in self._key(split).items()))

    def results(self, split):
        """The recorded results of ``split``."""
        return self.entries[split]["results"]

    def add(self, split, results):
        """Records ``split``'s results (written at once, atomically)."""
        if self.checkpoint is None:
            return
        self.entries[split] = {**self._key(split), "results": results}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.entries, f, indent=1, default=float)
        os.replace(tmp, self.path)


def _step_limit_reached(brain, checkpointer):
    """Whether a run's checkpoints already reached ``optimizer_step_limit`` (then fit
    would only add an epoch without updates)."""
    limit = brain.optimizer_step_limit
    if not limit:
        return False
    done = max((c.meta.get("updates", 0) for c in checkpointer.find_checkpoints(
        max_num_checkpoints=None)), default=0)
    if done >= limit:
        logger.info("optimizer_step_limit %d reached (%d updates): not training further",
                    limit, done)
        return True
    return False


def load_recipe_hparams(argv, known_keys, check_mode=None):
    """Parses the command line, loads the YAML and checks its keys and mode.

    ``check_mode(hp, hparams_file)`` (:meth:`Task.check_mode`) runs before anything is
    built or written. ``--verbose`` shows the libraries' own bars and notices
    (:func:`cald_speech.cli.quiet`).
    """
    quiet("--verbose" in argv)
    argv = [a for a in argv if a != "--verbose"]
    hparams_file, run_opts, overrides = parse_run_options(argv)
    if not os.path.isfile(hparams_file):
        raise ConfigError(f"{hparams_file}: hparams file not found")
    given = _override_values(overrides)
    check_types(given, "command line", command_line=set(given))  # before anything is built
    plain = _plain_values(hparams_file)
    if check_mode is not None and plain is not None:
        check_mode({**plain, **given}, hparams_file)
    # Under torchrun: join the process group (no-op in a single process).
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as f:
        try:
            hp = load_hyperpyyaml(f, overrides)
        except ruamel.yaml.YAMLError as exc:
            raise yaml_error(exc, hparams_file) from None
        except KeyError as exc:  # an override naming a key the file does not have
            with open(hparams_file, encoding="utf-8") as g:
                file_keys = set(yaml.safe_load(_strip_tags(g.read())) or {})
            given = set(yaml.safe_load(overrides) or {}) if overrides else set()
            for key in sorted(given - file_keys):
                check_hparams_keys({key: None}, known_keys | file_keys, "command line")
            raise ConfigError(f"{hparams_file}: {exc.args[0]}") from None
    if not isinstance(hp, dict):
        raise ConfigError(f"{hparams_file}: expected a mapping of options, got "
                          f"{type(hp).__name__}")
    check_hparams_keys(hp, known_keys, hparams_file)
    check_types(hp, hparams_file, command_line=set(given))
    settle_intervals(hp, run_opts, hparams_file)
    seed_host_generators(hp.get("seed"))
    base = os.path.dirname(os.path.abspath(hparams_file))
    for key in ("model_config", "mixer"):
        hp[key] = load_fragment(hp.get(key), base, key)
    log_config = {"log_config": run_opts["log_config"]} if run_opts["log_config"] else {}
    sb.create_experiment_directory(
        experiment_directory=hp["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
        **log_config,
    )
    return hp, run_opts


def _override_values(overrides):
    """The command-line overrides as plain values (those with YAML tags left out)."""
    try:
        given = yaml.safe_load(overrides) if overrides else None
    except yaml.YAMLError:  # tags (!ref ...) or a syntax error, reported by the full load
        return {}
    return given if isinstance(given, dict) else {}


def seed_host_generators(seed):
    """Seeds Python's and NumPy's generators (the YAML's ``__set_seed`` seeds torch's).

    transformers draws wav2vec2's SpecAugment time masks and LayerDrop from NumPy's
    global generator; unseeded, two runs with the same ``seed`` would differ.

    Example
    -------
    >>> seed_host_generators(3)
    >>> a = np.random.rand()
    >>> seed_host_generators(3)
    >>> a == np.random.rand()
    True
    """
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _strip_tags(text):
    # Drop hyperpyyaml tags so that plain YAML can list the top-level keys.
    return re.sub(r"!\S+", "", text)


def _plain_values(hparams_file):
    """The file's top-level keys and untagged values, read as plain YAML (None on
    errors: the full load reports them)."""
    try:
        with open(hparams_file, encoding="utf-8") as f:
            values = yaml.safe_load(_strip_tags(f.read()))
    except (OSError, yaml.YAMLError):
        return None
    return values if isinstance(values, dict) else None


def _raw_values(hparams_file):
    """``[(key, value as written)]`` of the file's top-level keys (for ``--help``)."""
    rows = []
    with open(hparams_file, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^([A-Za-z]\w*):(.*)$", line.rstrip())
            if m:
                value = re.sub(r"\s+#.*$", "", m.group(2)).strip()
                rows.append((m.group(1), value or "(a mapping, below it in the file)"))
    return rows


def load_fragment(value, base, key):
    """A YAML fragment given inline (dict) or as a file path (relative to ``base``).

    ``mixer`` also takes a mixer's name (``--mixer linformer``): that mixer with its
    default options, as ``cald-convert --mixer`` builds it.

    Example
    -------
    >>> load_fragment("linformer", ".", "mixer")
    {'name': 'linformer'}
    """
    if value is None or isinstance(value, dict):
        return value
    path = value if os.path.isabs(value) else os.path.join(base, value)
    if not os.path.isfile(path):
        if key == "mixer" and os.sep not in value and not value.endswith(".yaml"):
            from cald_speech.mixers import get_mixer_class

            return {"name": get_mixer_class(value).name}  # a name, or a ConfigError
        raise ConfigError(f"{key}: fragment file '{path}' not found")
    with open(path, encoding="utf-8") as f:
        frag = load_hyperpyyaml(f)
    if not isinstance(frag, dict):
        raise ConfigError(f"{path}: expected a mapping of {key} options")
    return frag


def prepare_manifests(hp):
    """Writes the CSV manifests of every split; returns {split: csv path}."""
    splits = [*hp["train_splits"], *hp["valid_splits"], *hp["test_splits"]]
    fmt = hp.get("data_format", RECIPE_DEFAULTS["data_format"])
    folder = hp["manifest_folder"]
    if fmt == "librispeech":
        from cald_speech.data.librispeech import prepare_librispeech

        sb.utils.distributed.run_on_main(
            prepare_librispeech,
            kwargs={"data_folder": hp["data_folder"], "save_folder": folder, "splits": splits},
        )
    elif fmt == "slurp":
        from cald_speech.data.slurp import prepare_slurp

        sb.utils.distributed.run_on_main(
            prepare_slurp,
            kwargs={
                "data_folder": hp["data_folder"], "save_folder": folder, "splits": splits,
                "recording": hp.get("slurp_recording", RECIPE_DEFAULTS["slurp_recording"]),
            },
        )
    elif fmt == "csv":
        csvs = {s: os.path.join(hp["data_folder"], f"{s}.csv") for s in splits}
        missing = [p for p in csvs.values() if not os.path.isfile(p)]
        if missing:
            raise ConfigError(
                f"data_format csv reads <data_folder>/<split>.csv, but {missing} do not "
                "exist; write them with cald-prepare (merge several with cald-prepare merge)"
            )
        return csvs
    else:
        raise ConfigError(f"unknown data_format '{fmt}'; use librispeech, slurp or csv")
    return {s: os.path.join(folder, f"{s}.csv") for s in splits}


def loader_opts(hp, dataset, train):
    """DataLoader options of a split.

    Training with ``sorting: random`` draws a new permutation of the items every epoch
    from ``seed`` and the epoch number (reproducible, so a run resumed mid-epoch
    continues with the same batches); ``dynamic_batching`` shuffles its duration
    buckets the same way. Any other sorting keeps the dataset's order.
    """
    # A loader of its own generator: creating its iterator (SpeechBrain does so again
    # after a resume) must not draw from the global one, or dropout draws would shift.
    opts = {"num_workers": hp.get("num_workers", RECIPE_DEFAULTS["num_workers"]),
            "generator": torch.Generator().manual_seed(int(hp.get("seed") or 0))}
    if train and hp.get("dynamic_batching", RECIPE_DEFAULTS["dynamic_batching"]):
        return {**opts, **dynamic_batching(
            dataset, hp["max_batch_seconds"],
            hp.get("num_buckets", RECIPE_DEFAULTS["num_buckets"]), seed=hp["seed"]
        )}
    if train and hp.get("sorting", RECIPE_DEFAULTS["sorting"]) == "random":
        sampler = epoch_sampler(dataset, hp["seed"])
        return {**opts, "batch_size": hp["batch_size"], "sampler": sampler}
    return {**opts, "batch_size": hp["batch_size"], "shuffle": False}


def recipe_entry(run, argv=None):
    """Runs a recipe driver from the command line: bad input ends in one line and exit 1.

    Under torchrun every process waits for the others (rank 0 packages the model last)
    and leaves the process group before exiting, so that no rank tears the group down
    under another one.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(recipe_help(argv))
        sys.exit(0 if argv else 2)
    try:
        result = run(argv)
    except CaldError as exc:
        sys.exit(f"error: {exc}")
    _leave_process_group()
    return result


def recipe_help(argv):
    """``train.py --help``: the command line, the hparams file's options and their values
    (when the file is given), and the SpeechBrain run options the recipes take."""
    lines = ["usage: python train.py HPARAMS.yaml [--option value ...]", "",
             "Every top-level key of the hparams file is an option (--key value, YAML "
             "syntax: --train_splits \"[a, b]\"); a value on the command line replaces "
             "the file's. Everything the run writes goes under --output_folder."]
    path = next((a for a in argv if a.endswith((".yaml", ".yml"))), None)
    if path is not None and os.path.isfile(path):
        lines += ["", f"options of {path} (default: the value in the file):"]
        lines += [f"  --{key:<28} {value}" for key, value in _raw_values(path)]
    else:
        lines += ["", "(give the hparams file before --help to list its options)"]
    lines += ["", "run options (SpeechBrain's, those the recipes take):"]
    lines += [f"  {flag:<30} {text}" for flag, text in run_option_help()]
    lines += [f"  {'--verbose':<30} also show the libraries' own progress bars and notices"]
    return "\n".join(lines)


def _leave_process_group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # Free the DDP wrappers (kept alive by reference cycles) while the process
        # group still exists: torn down after it, gloo may abort the process at exit.
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
