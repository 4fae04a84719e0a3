"""CTC models of the ASR task: loading with the right head size, building from a config.

A transformers model without a CTC head (a pretrained encoder), or with a head of
another size, gets a new one; a waypoint student whose source has no head takes the
head the teacher trajectory started from.
"""

import logging

from cald_speech.errors import ConfigError
from cald_speech.families import family_class, family_config_class, family_of_class
from cald_speech.student import load_model, load_strict, read_config, supported_class
from cald_speech.tasks.modes import check_folder

logger = logging.getLogger(__name__)


def load_ctc_model(source, vocab_size, pad_token_id=0):
    """Loads a CTC model (student or transformer) whose head has ``vocab_size`` outputs.

    A transformer without a CTC head, or with one of another size, gets a new head
    (randomly initialised) — the usual start of a fine-tuning run.
    """
    source = check_folder(source, "model")
    if has_ctc_head(source, vocab_size):
        model = load_model(source)
    else:
        arch = (read_config(source).get("architectures") or [""])[0]
        supported_class(arch)
        ctc_cls = family_class(family_of_class(arch), "ctc")
        logger.warning("%s: new CTC head with %d outputs on %s (randomly initialised)",
                       source, vocab_size, arch)
        model = load_strict(ctc_cls, source, allow_new=("lm_head.*",), vocab_size=vocab_size,
                            pad_token_id=pad_token_id, ignore_mismatched_sizes=True)
    head = getattr(model, "lm_head", None)
    if head is None or head.out_features != vocab_size:
        raise ConfigError(
            f"{source}: CTC head has {getattr(head, 'out_features', None)} outputs but the "
            f"tokenizer has {vocab_size} units; use the tokenizer the model was trained with"
        )
    return model.train()


def has_ctc_head(source, vocab_size):
    """Whether the model folder ``source`` holds a CTC head with ``vocab_size`` outputs."""
    cfg = read_config(source)
    arch = (cfg.get("architectures") or [""])[0]
    return "cald" in cfg or (arch.endswith("ForCTC") and cfg.get("vocab_size") == vocab_size)


def ctc_model_from_config(config, vocab_size, family="wav2vec2"):
    """A randomly initialised CTC transformer from a dict of config values."""
    cfg = family_config_class(family)(
        **{**dict(config), "vocab_size": vocab_size, "pad_token_id": 0}
    )
    return family_class(family, "ctc")(cfg)


def share_start_head(model, hp, guidance, load_task, vocab_size):
    """Waypoint mode: a student whose source has no CTC head takes the trajectory's own.

    The fine-tuning run saved its starting point as waypoint ``step-0``; its head is
    the one the teacher trajectory started from. Without that waypoint the student
    keeps its newly drawn head, and the log says why that matters.
    """
    src = hp.get("student_source") or hp.get("pretrained_source")
    src = check_folder(src, "student source")
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
