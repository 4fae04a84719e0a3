"""Recipe drivers: ``python recipes/<Corpus>/<task>/train.py hparams.yaml`` calls these.

Each driver reads the hparams, prepares the data, builds teacher and student for the
chosen ``mode`` (:mod:`cald_speech.experiment`), trains with the shared distillation
Brain, evaluates every test split with the best checkpoint and packages the model
for inference in ``<output_folder>/model``.
"""

import gc
import logging
import os
import random
import re
import sys
from functools import partial

import numpy as np
import ruamel.yaml
import speechbrain as sb
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml

from cald_speech.asr import CTCBrain
from cald_speech.brains import RANK_KEY
from cald_speech.data.pipeline import (
    add_ctc_targets,
    audio_dataset,
    dynamic_batching,
    epoch_sampler,
)
from cald_speech.errors import CaldError, ConfigError
from cald_speech.experiment import (
    build_models,
    check_hparams_keys,
    ctc_model_from_config,
    has_ctc_head,
    load_ctc_model,
)
from cald_speech.features import FeatureCache
from cald_speech.hparams_check import check_types, yaml_error
from cald_speech.student import package_model

logger = logging.getLogger(__name__)

#: Keys the ASR recipe reads (typos of these fail early).
ASR_KEYS = {
    "seed", "mode", "data_folder", "data_format", "output_folder", "save_folder",
    "manifest_folder", "train_splits", "valid_splits", "test_splits", "text_column",
    "normalize_text", "slurp_recording", "model_source", "model_config", "model_family",
    "teacher_source", "student_source", "pretrained_source", "waypoint_dir",
    "waypoint_every", "tokenizer", "cache_features", "train_feature_encoder",
    "feature_cache_folder", "best_metric",
    "number_of_epochs", "batch_size", "dynamic_batching", "max_batch_seconds",
    "num_buckets", "sorting", "max_duration", "min_duration", "num_workers",
    "encoder_opt_class", "head_opt_class", "teacher_encoder_opt_class",
    "teacher_head_opt_class", "teacher_encoder_lr_schedule", "teacher_head_lr_schedule",
    "encoder_lr_schedule", "lr_teacher_encoder", "lr_teacher_head",
    "head_lr_schedule", "epoch_counter", "train_logger",
    "checkpointer", "step_log", "log_every", "wer_file", "alpha_layer", "alpha_logit",
    "kd_temperature", "layer_indices", "layer_weights", "spec_augment_layer_loss",
    "mixer", "init",
    "keep_attention", "switch_step", "logit_kd_after_switch", "teacher_update_every",
    "package_folder", "max_grad_norm", "precision", "optimizer_step_limit",
    "ckpt_interval_minutes", "ckpt_interval_steps", "find_unused_parameters",
    "device", "distributed_backend", "lr_encoder", "lr_head", "warmup_updates",
    "total_updates", "lr_decay", "max_bad_fraction", "bad_items_file", "max_nonfinite_steps",
}


def load_recipe_hparams(argv, known_keys):
    """Parses the command line, loads the YAML and checks its keys."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    if not os.path.isfile(hparams_file):
        raise ConfigError(f"{hparams_file}: hparams file not found")
    given = _override_values(overrides)
    check_types(given, "command line", command_line=set(given))  # before anything is built
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
    seed_host_generators(hp.get("seed"))
    base = os.path.dirname(os.path.abspath(hparams_file))
    for key in ("model_config", "mixer"):
        hp[key] = load_fragment(hp.get(key), base, key)
    sb.create_experiment_directory(
        experiment_directory=hp["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
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


def load_fragment(value, base, key):
    """A YAML fragment given inline (dict) or as a file path (relative to ``base``)."""
    if value is None or isinstance(value, dict):
        return value
    path = value if os.path.isabs(value) else os.path.join(base, value)
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: fragment file '{path}' not found")
    with open(path, encoding="utf-8") as f:
        frag = load_hyperpyyaml(f)
    if not isinstance(frag, dict):
        raise ConfigError(f"{path}: expected a mapping of {key} options")
    return frag


def prepare_manifests(hp):
    """Writes the CSV manifests of every split; returns {split: csv path}."""
    splits = [*hp["train_splits"], *hp["valid_splits"], *hp["test_splits"]]
    fmt = hp.get("data_format", "librispeech")
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
                "recording": hp.get("slurp_recording", "all"),
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


def _normalizer(hp):
    if not hp.get("normalize_text", False):
        return None
    from cald_speech.data.text import normalize_text

    return normalize_text


def asr_datasets(hp, csvs, tokenizer):
    """Train/valid/test datasets with ``sig``, ``ok``, ``words`` and ``tokens``."""
    text = hp.get("text_column", "wrd")
    norm = _normalizer(hp)

    def make(split, sorting):
        ds, report = audio_dataset(
            csvs[split], required=(text,), sorting=sorting,
            max_duration=hp.get("max_duration"), min_duration=hp.get("min_duration", 0.0),
        )
        if report["skipped"]:
            logger.warning("%s: %d unusable item(s) skipped", split, report["skipped"])
        return add_ctc_targets(ds, tokenizer, text, norm)

    train = [make(s, hp.get("sorting", "ascending")) for s in hp["train_splits"]]
    if len(train) > 1:
        raise ConfigError("give one train split (merge corpora in one manifest)")
    valid = [make(s, "ascending") for s in hp["valid_splits"]]
    tests = {s: make(s, "ascending") for s in hp["test_splits"]}
    return train[0], valid[0], tests


def _loader_opts(hp, dataset, train):
    """DataLoader options of a split.

    Training with ``sorting: random`` draws a new permutation of the items every epoch
    from ``seed`` and the epoch number (reproducible, so a run resumed mid-epoch
    continues with the same batches); ``dynamic_batching`` shuffles its duration
    buckets the same way. Any other sorting keeps the dataset's order.
    """
    # A loader of its own generator: creating its iterator (SpeechBrain does so again
    # after a resume) must not draw from the global one, or dropout draws would shift.
    opts = {"num_workers": hp.get("num_workers", 0),
            "generator": torch.Generator().manual_seed(int(hp.get("seed") or 0))}
    if train and hp.get("dynamic_batching", False):
        return {**opts, **dynamic_batching(
            dataset, hp["max_batch_seconds"], hp.get("num_buckets", 20), seed=hp["seed"]
        )}
    if train and hp.get("sorting", "ascending") == "random":
        sampler = epoch_sampler(dataset, hp["seed"])
        return {**opts, "batch_size": hp["batch_size"], "sampler": sampler}
    return {**opts, "batch_size": hp["batch_size"], "shuffle": False}


def recipe_entry(run, argv=None):
    """Runs a recipe driver from the command line: bad input ends in one line and exit 1.

    Under torchrun every process waits for the others (rank 0 packages the model last)
    and leaves the process group before exiting, so that no rank tears the group down
    under another one.
    """
    try:
        result = run(sys.argv[1:] if argv is None else argv)
    except CaldError as exc:
        sys.exit(f"error: {exc}")
    _leave_process_group()
    return result


def _leave_process_group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # Free the DDP wrappers (kept alive by reference cycles) while the process
        # group still exists: torn down after it, gloo may abort the process at exit.
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def asr_main(argv=None):
    """Command-line entry of the CTC recipe."""
    return recipe_entry(run_asr, argv)


def share_start_head(model, hp, guidance, load_task, vocab_size):
    """Waypoint mode: a student whose source has no CTC head takes the trajectory's own.

    The fine-tuning run saved its starting point as waypoint ``step-0``; its head is
    the one the teacher trajectory started from. Without that waypoint the student
    keeps its newly drawn head, and the log says why that matters.
    """
    src = hp.get("student_source") or hp.get("pretrained_source")
    if has_ctc_head(src, vocab_size):
        return
    start = dict(guidance.waypoints).get(0)
    if start is None:
        logger.warning(
            "waypoint: %s has no CTC head and %s no step-0 waypoint: the student's new "
            "head is not the one the teachers started from (fine-tune with waypoint_every "
            "set to save step-0)", src, hp.get("waypoint_dir"))
        return
    model.lm_head.load_state_dict(load_task(start).lm_head.state_dict())
    logger.info("waypoint: the student's CTC head is the trajectory's start (%s)", start)


def run_asr(argv):
    """Runs the LibriSpeech-style CTC recipe (teacher fine-tuning or CALD).

    Returns
    -------
    dict
        Per test split: WER, CER and the mean of every loss term.
    """
    hp, run_opts = load_recipe_hparams(argv, ASR_KEYS)
    if hp.get("best_metric", "WER") not in ("WER", "CER"):
        raise ConfigError(f"best_metric '{hp['best_metric']}' is not one of ['WER', 'CER']")
    csvs = prepare_manifests(hp)
    tokenizer = hp["tokenizer"]
    train, valid, tests = asr_datasets(hp, csvs, tokenizer)

    vocab = len(tokenizer)
    load_task = partial(load_ctc_model, vocab_size=vocab)
    model, teacher, guidance, loader = build_models(hp, load_task)
    if guidance is not None and guidance.mode == "waypoint":
        share_start_head(model, hp, guidance, load_task, vocab)
    if model is None:  # finetune: the transformer itself
        if hp.get("model_source"):
            model = load_task(hp["model_source"])
        elif hp.get("model_config"):
            model = ctc_model_from_config(
                hp["model_config"], vocab, hp.get("model_family", "wav2vec2")
            )
        else:
            raise ConfigError("mode 'finetune' needs model_source or model_config")
    hp["checkpointer"].add_recoverable("model", model)
    cache = None
    if hp.get("cache_features", True):
        cache = FeatureCache(hp["feature_cache_folder"])
    brain_hp = {**hp, "guidance": guidance, "feature_cache": cache, "teacher_loader": loader}
    brain = CTCBrain(
        modules={"model": model}, hparams=brain_hp, teacher=teacher,
        run_opts=run_opts, checkpointer=hp["checkpointer"],
    )
    brain.fit(
        hp["epoch_counter"], train, valid,
        train_loader_kwargs=_loader_opts(hp, train, True),
        valid_loader_kwargs=_loader_opts(hp, valid, False),
    )
    results = {}
    for split, ds in tests.items():
        results[split] = brain.evaluate_split(split, ds, min_key=RANK_KEY,
                                              test_loader_kwargs=_loader_opts(hp, ds, False))
    if sb.utils.distributed.if_main_process():
        folder = hp.get("package_folder") or os.path.join(hp["output_folder"], "model")
        package_model(
            brain.modules.model, folder, tokenizer,
            info={"mode": hp["mode"], "updates": brain.optimizer_step, "results": results,
                  "bad_items": brain.bad_items_total},
        )
        logger.info("packaged model: %s", folder)
    return results
