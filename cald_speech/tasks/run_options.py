"""SpeechBrain's run options in a recipe's command line: typed, checked, or refused.

``python train.py hparams.yaml --optimizer_step_limit 5`` goes through SpeechBrain's own
parser (:class:`speechbrain.utils.run_opts.RunOptions`), which leaves some values as
text and exits with a usage block on a bad one. Here every run option a recipe accepts
gets the type of its hparams twin (``--optimizer_step_limit 5`` is the integer 5,
``--ckpt_interval_minutes 0.5`` a number), a bad value is one
:class:`~cald_speech.errors.ConfigError` line, the options the recipes do not support
are refused before anything is built (:data:`REFUSED`), and one mid-epoch checkpoint
interval given on the command line replaces the file's other one.

Example
-------
>>> _, run_opts, _ = parse_run_options(["x.yaml", "--optimizer_step_limit", "5"])
>>> run_opts["optimizer_step_limit"]
5
>>> parse_run_options(["x.yaml", "--jit"])
Traceback (most recent call last):
  ...
cald_speech.errors.ConfigError: command line: --jit is not supported by the cald-speech ...
"""

import logging

from speechbrain.utils.run_opts import RunOptions

from cald_speech.errors import ConfigError
from cald_speech.tasks.hparams import KINDS, OPTION_KINDS

logger = logging.getLogger(__name__)

#: Run options the recipes refuse, and why (a fix is to leave them out).
REFUSED = {
    "jit": "TorchScript cannot compile the transformers encoders",
    "jit_module_keys": "TorchScript cannot compile the transformers encoders",
    "compile": "torch.compile is not tested with the students' mixers",
    "compile_module_keys": "torch.compile is not tested with the students' mixers",
    "compile_mode": "torch.compile is not tested with the students' mixers",
    "compile_using_fullgraph": "torch.compile is not tested with the students' mixers",
    "compile_using_dynamic_shape_tracing": "torch.compile is not tested with the students' "
                                           "mixers",
    "data_parallel_backend": "several GPUs train with DDP: torchrun --nproc_per_node N "
                             "train.py ...",
    "skip_nonfinite_grads": "a step with a non-finite loss or gradient is always skipped; "
                            "set --max_nonfinite_steps N to stop after N in a row",
    "nonfinite_patience": "use --max_nonfinite_steps N (non-finite steps in a row before "
                          "training stops)",
    "profile_training": "the recipes' training loop has no profiler hooks",
    "profile_warmup": "the recipes' training loop has no profiler hooks",
    "profile_steps": "the recipes' training loop has no profiler hooks",
}

#: Run options whose value must be of an hparams kind (:data:`~.hparams.KINDS`).
RUN_OPTION_KINDS = {
    **{k: v for k, v in OPTION_KINDS.items() if k in ("optimizer_step_limit",
                                                      "ckpt_interval_steps",
                                                      "ckpt_interval_minutes",
                                                      "max_grad_norm")},
    "grad_accumulation_factor": "pos_int", "debug_batches": "pos_int", "debug_epochs": "int",
}

#: argparse types of the options SpeechBrain's parser leaves as text or as integers only.
_TYPES = {"optimizer_step_limit": int, "ckpt_interval_minutes": float}
INTERVALS = ("ckpt_interval_minutes", "ckpt_interval_steps")


def _raise(message):
    raise ConfigError(f"command line: {message}")


class RecipeRunOptions(RunOptions):
    """SpeechBrain's run options, parsed with the types the recipes need."""

    @staticmethod
    def _create_parser():
        parser = RunOptions._create_parser()
        parser.prog = "train.py"
        parser.error = _raise  # one ConfigError line, not a usage block and exit 2
        for action in parser._actions:
            if action.dest in _TYPES:
                action.type = _TYPES[action.dest]
        return parser


def parse_run_options(argv):
    """``(hparams file, run options, YAML overrides)`` of a recipe's command line.

    Raises ConfigError for a bad value or a refused option (:data:`REFUSED`).
    """
    hparams_file, run_opts, overrides = RecipeRunOptions.from_command_line_args(list(argv))
    given = sorted(run_opts.overridden_args)
    for name in given:
        if name in REFUSED:
            raise ConfigError(f"command line: --{name} is not supported by the cald-speech "
                              f"recipes ({REFUSED[name]}); fix: leave it out")
        kind = RUN_OPTION_KINDS.get(name)
        if kind is not None:
            test, what = KINDS[kind]
            value = run_opts[name]
            if not test(value):
                raise ConfigError(f"command line: --{name} must be {what}, got {value!r}")
    return hparams_file, run_opts, overrides


def settle_intervals(hp, run_opts, hparams_file):
    """One mid-epoch checkpoint interval: the command line's wins over the file's.

    SpeechBrain stops when both ``ckpt_interval_minutes`` and ``ckpt_interval_steps`` are
    positive. One of them given on the command line turns the other off (logged); both
    given, or both positive in the file, is a ConfigError.

    Example
    -------
    >>> _, run_opts, _ = parse_run_options(["x.yaml", "--ckpt_interval_steps", "10"])
    >>> hp = {"ckpt_interval_minutes": 15}
    >>> settle_intervals(hp, run_opts, "x.yaml")
    >>> hp["ckpt_interval_minutes"], run_opts["ckpt_interval_steps"]
    (0, 10)
    """
    given = [k for k in INTERVALS if k in run_opts.overridden_args]
    if len(given) == 2:
        if all(run_opts[k] > 0 for k in INTERVALS):
            raise ConfigError("command line: give --ckpt_interval_minutes or "
                              "--ckpt_interval_steps, not both (fix: keep one; 0 turns "
                              "one off)")
        return
    if len(given) == 1:
        (mine,) = given
        (other,) = (k for k in INTERVALS if k != mine)
        if run_opts[mine] > 0 and (hp.get(other) or 0) > 0:
            logger.info("mid-epoch checkpoints every %s %s (command line), not every %s "
                        "%s (%s)", run_opts[mine], mine.rsplit("_", 1)[1], hp[other],
                        other.rsplit("_", 1)[1], hparams_file)
            hp[other] = 0
        return
    if all((hp.get(k) or 0) > 0 for k in INTERVALS):
        raise ConfigError(f"{hparams_file}: ckpt_interval_minutes and ckpt_interval_steps "
                          "are both set (fix: keep one; 0 turns one off)")


def run_option_help():
    """``[(flag, help)]`` of the run options the recipes take (for ``train.py --help``)."""
    parser = RecipeRunOptions._create_parser()
    rows = []
    for action in parser._actions:
        if not action.option_strings or action.dest in REFUSED or action.dest == "help":
            continue
        default = action.default
        text = " ".join((action.help or "").split())
        if default not in (None, False) and "default" not in text.lower():
            text += f" (default: {default})"
        rows.append((action.option_strings[0], text))
    return sorted(rows)
