"""Recipe hparams: YAML errors and option types caught before any model is loaded.

A YAML syntax error names the file (or the command-line override) and the line; an
option of the wrong type (``--batch_size abc``) names the option, what it must be and
what it got, instead of failing inside the DataLoader after the model has loaded.

Example
-------
>>> check_types({"batch_size": 8, "lr_encoder": 3e-4, "normalize_text": True}, "x.yaml")
>>> check_types({"batch_size": "abc"}, "x.yaml")
Traceback (most recent call last):
  ...
cald_speech.errors.ConfigError: x.yaml: batch_size must be a positive integer, got 'abc' (str)
"""

import difflib
import numbers

from cald_speech.errors import ConfigError


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


#: (test, description) of each kind of option.
KINDS = {
    "pos_int": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "nonneg_int": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "pos_int_or_null": (lambda v: v is None or (_is_int(v) and v > 0),
                        "a positive integer or null"),
    "pos_num": (lambda v: _is_num(v) and v > 0, "a positive number"),
    "nonneg_num": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "pos_num_or_null": (lambda v: v is None or (_is_num(v) and v > 0),
                        "a positive number or null"),
    "pos_num_or_auto": (lambda v: v == "auto" or (_is_num(v) and v > 0),
                        "a positive number or auto"),
    "nonneg_num_or_null": (lambda v: v is None or (_is_num(v) and v >= 0),
                           "a number >= 0 or null"),
    "int": (_is_int, "an integer"),
    "num": (_is_num, "a number"),
    "num_or_null": (lambda v: v is None or _is_num(v), "a number or null"),
    "fraction": (lambda v: _is_num(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str_list": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v),
                 "a list of names, e.g. [train-clean-100]"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str_or_null": (lambda v: v is None or isinstance(v, str), "a string or null"),
}

#: The kind of every scalar option a recipe reads (others are checked where used).
OPTION_KINDS = {
    "seed": "int",
    "number_of_epochs": "pos_int", "batch_size": "pos_int", "warmup_updates": "nonneg_int",
    "total_updates": "pos_int", "log_every": "pos_int", "num_buckets": "pos_int",
    "num_workers": "nonneg_int", "teacher_update_every": "pos_int",
    "waypoint_every": "pos_int_or_null", "switch_step": "nonneg_int",
    "waypoint_pace": "pos_num_or_auto",
    "ckpt_interval_steps": "nonneg_int", "optimizer_step_limit": "pos_int_or_null",
    "lr_encoder": "pos_num", "lr_head": "pos_num", "lr_teacher_encoder": "pos_num",
    "lr_teacher_head": "pos_num", "lr_decay": "pos_num", "max_batch_seconds": "pos_num",
    "max_duration": "pos_num_or_null", "min_duration": "nonneg_num",
    "max_grad_norm": "pos_num_or_null", "alpha_layer": "nonneg_num",
    "alpha_logit": "nonneg_num", "kd_temperature": "pos_num",
    "ckpt_interval_minutes": "nonneg_num", "max_bad_fraction": "fraction",
    "max_nonfinite_steps": "pos_int", "bad_items_file": "str_or_null",
    "normalize_text": "bool", "cache_features": "bool", "train_feature_encoder": "bool",
    "dynamic_batching": "bool", "logit_kd_after_switch": "bool",
    "find_unused_parameters": "bool",
    "train_splits": "str_list", "valid_splits": "str_list", "test_splits": "str_list",
    "data_format": "str", "sorting": "str", "text_column": "str", "mode": "str",
    "model_source": "str_or_null", "teacher_source": "str_or_null",
    "student_source": "str_or_null", "pretrained_source": "str_or_null",
    "precision": "str", "best_metric": "str",
    "beam_size": "pos_int_or_null", "lm": "str_or_null", "lm_weight": "nonneg_num_or_null",
    "word_bonus": "num_or_null", "beam_engine": "str",
}


def check_types(hp, where, kinds=None, command_line=()):
    """Raises ConfigError for the first option whose value is not of its kind.

    Arguments
    ---------
    hp : dict
        Loaded hparams.
    where : str
        What to name in the message (the hparams file).
    kinds : dict, optional
        ``{option: kind}`` (default :data:`OPTION_KINDS`); kinds are keys of :data:`KINDS`.
    command_line : collection of str
        Options given on the command line (named as ``--option`` in the message).
    """
    for key, kind in (kinds or OPTION_KINDS).items():
        if key not in hp:
            continue
        test, what = KINDS[kind]
        value = hp[key]
        if not test(value):
            name = f"command line: --{key}" if key in command_line else f"{where}: {key}"
            hint = ""
            if isinstance(value, str) and test(_as_number(value)):
                hint = (f"; YAML reads {value} as text: write it with a decimal point "
                        f"and a signed exponent, e.g. {float(value):.1e}")
            raise ConfigError(
                f"{name} must be {what}, got {value!r} ({type(value).__name__}){hint}"
            )


def _as_number(text):
    """``text`` as a float when it reads as one (``1e-5``), else ``text``."""
    try:
        return float(text)
    except ValueError:
        return text


def yaml_error(exc, hparams_file):
    """A ConfigError for a ruamel YAML error, naming the file or the override and the line."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None and mark.name == "<unicode string>":
        return ConfigError(f"YAML syntax error in the command-line overrides ({problem}); "
                           "quote lists and strings, e.g. --train_splits \"[a, b]\"")
    line = f", line {mark.line + 1}" if mark is not None else ""
    return ConfigError(f"{hparams_file}{line}: YAML syntax error ({problem}); fix the file")


def check_hparams_keys(hparams, known, hparams_file):
    """Fails on top-level keys that look like typos of keys the recipe reads.

    A key that is not known but is close to a known one (``alpha_layr``) is an error
    with a suggestion; other unknown keys are taken as the user's own helper values.

    Example
    -------
    >>> check_hparams_keys({"alpha_layer": 1, "my_lr": 2}, {"alpha_layer"}, "x.yaml")
    >>> check_hparams_keys({"alpha_layr": 1}, {"alpha_layer"}, "x.yaml")
    Traceback (most recent call last):
      ...
    cald_speech.errors.ConfigError: x.yaml: unknown key 'alpha_layr' (did you mean 'alpha_layer'?)
    """
    for key in hparams:
        if key in known or key.startswith("_"):
            continue
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.85)
        if close:
            raise ConfigError(f"{hparams_file}: unknown key '{key}' (did you mean '{close[0]}'?)")
