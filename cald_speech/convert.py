"""Conversion of a transformers speech encoder into a linear-time student.

:func:`convert` follows the parameter transfer of CALD (He & Garner, ICLR 2025): the
self-attention of every encoder layer is replaced by a linear-time mixer and every
other module — CNN feature encoder, feature projection, positional convolution, all
LayerNorms, feed-forward blocks, adapters, task head — is copied unchanged.
``init="attention"`` starts each mixer from the attention it replaces (MambaInLlama,
Wang et al. 2024: V->x, K->B, Q->C, O->out_proj for Mamba2; Q/K/V/O copied directly for
attention-shaped mixers); ``init="random"`` keeps the mixer's own initialisation, as in
the paper. ``keep_attention`` leaves chosen layers as the original softmax attention
(hybrid students).

WavLM's attention adds a gated relative position bias; a mixer has no such bias, so
it is dropped with the attention it belongs to. Layers kept as attention keep their
module intact (see :func:`cald_speech.student.install_mixers` for layer 0's embedding).

The ``cald-convert`` command converts a saved transformers folder and prints where
the parameters went (:func:`parameter_table`).

Example
-------
>>> import torch
>>> teacher = tiny_teacher("wav2vec2-base", head="ctc")
>>> student = convert(teacher, mixer="bimamba2", init="attention", keep_attention=[1])
>>> student.layer_kinds()
['mixer:bimamba2', 'attention']
>>> wav = torch.randn(2, 800)
>>> student(wav).logits.shape == teacher(wav).logits.shape
True
"""

import argparse
import ast
import copy
import os
import sys
from pathlib import Path

import torch
from torch import nn

from cald_speech.cli import add_version, fail, parse
from cald_speech.errors import CaldError, ConfigError, DataError
from cald_speech.families import HEADS, family_class, family_config_class
from cald_speech.mixers import available_mixers, build_mixer, get_mixer_class
from cald_speech.mixers.ops.fused import IMPL_ENV
from cald_speech.student import (
    FAMILIES,
    SUPPORTED_CLASSES,
    Student,
    encoder_layers,
    install_mixers,
    load_model,
    model_family,
    read_config,
    supported_class,
)

INITS = ("attention", "random")

#: Architecture settings of public checkpoints (their config.json, widths included).
PUBLIC_SHAPES = {
    "wav2vec2-base": (
        "wav2vec2",
        dict(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, feat_extract_norm="group", do_stable_layer_norm=False,
            conv_bias=False, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
        ),
    ),
    "wav2vec2-large-lv60": (
        "wav2vec2",
        dict(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
            intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
            conv_bias=True, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
        ),
    ),
    "hubert-large-ll60k": (
        "hubert",
        dict(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
            intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
            conv_bias=True, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
        ),
    ),
    "wavlm-base-plus": (
        "wavlm",
        dict(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, feat_extract_norm="group", do_stable_layer_norm=False,
            conv_bias=False, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
            num_buckets=320, max_bucket_distance=800,
        ),
    ),
}

#: Widths that shrink a public shape for tests and examples (structure flags kept).
TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=32,
    max_bucket_distance=64, vocab_size=12, num_labels=3, classifier_proj_size=16,
)


def public_config(shape, tiny=False, **overrides):
    """A transformers config shaped like a public checkpoint, optionally shrunk.

    Arguments
    ---------
    shape : str
        A key of :data:`PUBLIC_SHAPES`.
    tiny : bool
        Replace the widths by :data:`TINY` (norm type, layer-norm placement and conv
        bias stay those of ``shape``).
    **overrides
        Further config values.

    Example
    -------
    >>> cfg = public_config("wav2vec2-large-lv60", tiny=True)
    >>> cfg.hidden_size, cfg.do_stable_layer_norm, cfg.feat_extract_norm
    (32, True, 'layer')
    """
    if shape not in PUBLIC_SHAPES:
        raise ConfigError(f"unknown shape '{shape}'; known: {', '.join(PUBLIC_SHAPES)}")
    family, values = PUBLIC_SHAPES[shape]
    values = {**values, **(TINY if tiny else {}), **overrides}
    if family != "wavlm":
        values.pop("num_buckets", None)
        values.pop("max_bucket_distance", None)
    return family_config_class(family)(**values)


def tiny_teacher(shape="wav2vec2-base", head="model", seed=0, **overrides):
    """A tiny randomly initialised teacher shaped like a public checkpoint, in eval mode.

    Arguments
    ---------
    shape : str
        A key of :data:`PUBLIC_SHAPES`.
    head : str
        ``"model"`` (encoder only), ``"ctc"`` or ``"classification"``.
    seed : int
        Seed of the weights (the global random state is left untouched).
    **overrides
        Config values, e.g. ``feat_extract_norm="layer"``.

    Example
    -------
    >>> type(tiny_teacher("hubert-large-ll60k", head="ctc")).__name__
    'HubertForCTC'
    """
    if head not in HEADS:
        raise ConfigError(f"unknown head '{head}'; known: {', '.join(HEADS)}")
    config = public_config(shape, tiny=True, **overrides)
    model_cls = family_class(config.model_type, head)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()


def _mixer_defaults(mixer, init, hidden_size, num_heads):
    """Options a mixer needs to take attention weights (e.g. bimamba2's MambaInLlama shape)."""
    if init != "attention":
        return {}
    return dict(get_mixer_class(mixer).attention_init_config(hidden_size, num_heads))


def check_conversion(config, mixer="bimamba2", init="attention", keep_attention=(), **mixer_cfg):
    """Validates conversion settings against a model config, doing no conversion work.

    Builds one throwaway mixer (and, with ``init="attention"``, fills it from
    attention-shaped projections) so that option errors surface here.

    Arguments
    ---------
    config : transformers.PretrainedConfig
        Config of the model to convert.
    mixer, init, keep_attention, **mixer_cfg
        As in :func:`convert`.

    Returns
    -------
    tuple
        ``(keep, cfg)``: sorted kept layer indices and the full mixer options.

    Raises
    ------
    ConfigError
        On an unsupported architecture, unknown init or mixer, mixer options that do
        not fit the model, or layer indices out of range.

    Example
    -------
    >>> check_conversion(public_config("wav2vec2-base", tiny=True), "bimamba2",
    ...                  keep_attention=[1])[0]
    [1]
    >>> check_conversion(public_config("wav2vec2-base", tiny=True), keep_attention=[5])
    Traceback (most recent call last):
    ...
    cald_speech.errors.ConfigError: keep_attention: layer 5 is out of range; the model has 2 ...
    """
    model_family(config)
    if init not in INITS:
        raise ConfigError(f"init must be one of {', '.join(INITS)}, got '{init}'")
    if not isinstance(mixer, str) or mixer not in available_mixers():
        raise ConfigError(
            f"unknown mixer '{mixer}'; available: {', '.join(available_mixers())}"
        )
    n_layers = config.num_hidden_layers
    if isinstance(keep_attention, (int, str)):
        keep_attention = [keep_attention]
    keep = set()
    for index in keep_attention:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ConfigError(f"keep_attention: layer indices must be integers, got {index!r}")
        if not 0 <= index < n_layers:
            raise ConfigError(
                f"keep_attention: layer {index} is out of range; the model has {n_layers} "
                f"encoder layers (0-{n_layers - 1})"
            )
        keep.add(index)
    hidden, heads = config.hidden_size, config.num_attention_heads
    if hidden % heads:
        raise ConfigError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    cfg = {**_mixer_defaults(mixer, init, hidden, heads), **mixer_cfg}
    probes = [nn.Linear(hidden, hidden) for _ in range(4)] if init == "attention" else None
    _build_mixer(mixer, hidden, heads, cfg, probes)
    return sorted(keep), cfg


def _build_mixer(mixer, hidden, heads, cfg, projections=None):
    """Builds a mixer (filled from attention projections when given), with clear errors."""
    try:
        module = build_mixer(mixer, hidden, heads, **cfg)
        if projections is not None:
            module.init_from_attention(*projections)
    except ConfigError as exc:
        raise ConfigError(f"mixer '{mixer}' with options {cfg}: {exc}") from exc
    except NotImplementedError as exc:
        raise ConfigError(f"{exc}") from exc
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"mixer '{mixer}' cannot be built for hidden_size {hidden}, {heads} heads with "
            f"options {cfg}: {exc}"
        ) from exc
    return module


def convert(model, mixer="bimamba2", init="attention", keep_attention=(), **mixer_cfg):
    """Makes a linear-time student from a transformers wav2vec2 / HuBERT / WavLM model.

    The teacher is not modified: the student holds copies of its weights.

    Arguments
    ---------
    model : transformers.PreTrainedModel or str or os.PathLike
        One of :data:`cald_speech.student.SUPPORTED_CLASSES` (with or without a CTC or
        classification head), or a local folder holding one.
    mixer : str
        Registered mixer name (:func:`cald_speech.mixers.available_mixers`).
    init : str
        ``"attention"``: each mixer starts from the Q/K/V/O projections of the
        attention it replaces (the mixer's options default to the shape that allows
        it, e.g. bimamba2's ``attention_init_config``); ``"random"``: the mixer's own
        initialisation.
    keep_attention : iterable of int
        Encoder layers (0-based) that keep their softmax attention.
    **mixer_cfg
        Mixer options (override the ``init="attention"`` defaults).

    Returns
    -------
    cald_speech.student.Student
        Same training/eval mode, device and dtype as the teacher.

    Raises
    ------
    ConfigError
        Before any copy is made, on bad settings (see :func:`check_conversion`).

    Example
    -------
    >>> teacher = tiny_teacher("wavlm-base-plus")
    >>> student = convert(teacher, mixer="attention", init="attention")
    >>> mixer = encoder_layers(student.model)[0].attention.mixer
    >>> torch.equal(mixer.q_proj.weight, encoder_layers(teacher)[0].attention.q_proj.weight)
    True
    """
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if isinstance(model, Student):
        raise ConfigError("the model is already a student; convert its teacher instead")
    if type(model).__name__ not in SUPPORTED_CLASSES or not isinstance(
        model, supported_class(type(model).__name__)
    ):
        raise ConfigError(
            f"unsupported architecture '{type(model).__name__}'; supported: "
            f"{', '.join(SUPPORTED_CLASSES)}"
        )
    keep, cfg = check_conversion(model.config, mixer, init, keep_attention, **mixer_cfg)
    config = model.config
    hidden, heads = config.hidden_size, config.num_attention_heads
    layers = encoder_layers(model)

    mixers = []
    for i, layer in enumerate(layers):
        if i in keep:
            mixers.append(None)
            continue
        attention = layer.attention
        projections = None
        if init == "attention":
            projections = (attention.q_proj, attention.k_proj, attention.v_proj,
                           attention.out_proj)
        module = _build_mixer(mixer, hidden, heads, cfg, projections)
        weight = attention.q_proj.weight
        mixers.append(module.to(device=weight.device, dtype=weight.dtype))

    student_model = copy.deepcopy(model)
    for param in student_model.parameters():
        param.grad = None
    install_mixers(student_model, mixers)
    student_model.train(model.training)

    cald = {
        "format_version": 1,
        "source_class": type(model).__name__,
        "source": str(getattr(model, "name_or_path", "") or ""),
        "init": init,
        "keep_attention": keep,
        "attn_implementation": config._attn_implementation,
        "mixers": [None if m is None else m.mixer_config() for m in mixers],
    }
    source = cald["source"] if cald["source"] and Path(cald["source"]).is_dir() else None
    return Student(student_model, cald, source_path=source)


# ---------------------------------------------------------------------------------------
# Where the parameters go
# ---------------------------------------------------------------------------------------

_KINDS = (
    ("CNN feature encoder", "feature_extractor."),
    ("feature projection", "feature_projection."),
    ("positional conv embedding", "pos_conv_embed."),
    ("masked-frame embedding", "masked_spec_embed"),
    ("mixers", ".attention.mixer."),
    ("self-attention", ".attention."),
    ("feed-forward", ".feed_forward."),
    ("adapters", "adapter"),
    ("layer norms", "layer_norm"),
)


def module_kind(name):
    """The module kind of a parameter of a (converted) transformers speech model.

    Example
    -------
    >>> module_kind("wav2vec2.encoder.layers.3.attention.mixer.fwd.A_log")
    'mixers'
    >>> module_kind("lm_head.weight")
    'task head'
    """
    for kind, key in _KINDS:
        if key in name:
            return kind
    return "task head"


def _layer_index(name):
    parts = name.split(".")
    if "layers" in parts and "encoder" in parts:
        return int(parts[parts.index("layers") + 1])
    return None


def parameter_table(teacher, student):
    """Parameters per module kind and what became of them, teacher vs student.

    Arguments
    ---------
    teacher : transformers.PreTrainedModel
        The source model.
    student : cald_speech.student.Student
        Its conversion.

    Returns
    -------
    list of dict
        Rows ``{"kind", "status", "teacher", "student"}``; ``status`` is
        ``transferred`` (copied unchanged), ``kept`` (softmax attention kept),
        ``dropped`` (attention replaced by a mixer) or ``new`` (mixer parameters);
        the last row is the total.

    Example
    -------
    >>> teacher = tiny_teacher()
    >>> rows = parameter_table(teacher, convert(teacher, "attention", keep_attention=[0]))
    >>> [(r["kind"], r["status"]) for r in rows if "attention" in r["kind"]]
    [('self-attention', 'kept'), ('self-attention', 'dropped')]
    """
    kept = set(student.cald["keep_attention"])
    counts = {}

    def add(model, column, mixer_status):
        for name, param in model.named_parameters():
            kind = module_kind(name)
            if kind == "mixers":
                status = mixer_status
            elif kind == "self-attention":
                status = "kept" if _layer_index(name) in kept else "dropped"
            else:
                status = "transferred"
            row = counts.setdefault((kind, status), {"teacher": 0, "student": 0})
            row[column] += param.numel()

    add(teacher, "teacher", "new")
    add(student.model, "student", "new")
    order = [kind for kind, _ in _KINDS] + ["task head"]
    statuses = ("transferred", "kept", "dropped", "new")
    rows = [
        {"kind": kind, "status": status, **counts[(kind, status)]}
        for kind in order
        for status in statuses
        if (kind, status) in counts
    ]
    rows.append({
        "kind": "total",
        "status": "",
        "teacher": sum(r["teacher"] for r in rows),
        "student": sum(r["student"] for r in rows),
    })
    return rows


def format_table(rows, title=None):
    """Formats :func:`parameter_table` rows as an aligned text table.

    Example
    -------
    >>> print(format_table([{"kind": "total", "status": "", "teacher": 1234, "student": 5}]))
    module kind                 status           teacher       student
    total                                          1,234             5
    """
    lines = [title] if title else []
    lines.append(f"{'module kind':<27} {'status':<11} {'teacher':>13} {'student':>13}")
    for r in rows:
        lines.append(
            f"{r['kind']:<27} {r['status']:<11} {r['teacher']:>13,} {r['student']:>13,}"
        )
    return "\n".join(lines)


def public_parameter_counts(mixer="bimamba2", init="attention", shapes=None, **mixer_cfg):
    """Teacher and student parameter counts for full-size public-checkpoint shapes.

    Builds each model from its config with random weights (several seconds and a few
    GB of memory for the large ones).

    Arguments
    ---------
    mixer, init, **mixer_cfg
        As in :func:`convert`.
    shapes : list of str, optional
        Keys of :data:`PUBLIC_SHAPES` (default: all).

    Returns
    -------
    dict
        ``{shape: {"teacher": n, "student": n, "mixers": n, "dropped_attention": n}}``.
    """
    result = {}
    for shape in shapes or PUBLIC_SHAPES:
        config = public_config(shape)
        model_cls = family_class(config.model_type)
        teacher = model_cls(config).eval()
        student = convert(teacher, mixer=mixer, init=init, **mixer_cfg)
        rows = parameter_table(teacher, student)
        result[shape] = {
            "teacher": rows[-1]["teacher"],
            "student": rows[-1]["student"],
            "mixers": sum(r["student"] for r in rows if r["status"] == "new"),
            "dropped_attention": sum(r["teacher"] for r in rows if r["status"] == "dropped"),
        }
        del teacher, student
    return result


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def _parse_layers(text):
    if not text.strip():
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer indices like 0,11, got '{text}'"
        ) from exc


def _parse_option(text):
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got '{text}'")
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a plain string such as impl=torch
    return key.strip(), value


def build_parser():
    """The ``cald-convert`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="cald-convert",
        description=(
            "Convert a local transformers wav2vec2 / HuBERT / WavLM folder into a "
            "linear-time student folder (attention replaced by a mixer, every other "
            "weight copied) and print where the parameters went. Supported classes: "
            + ", ".join(SUPPORTED_CLASSES)
        ),
    )
    parser.add_argument("src", help="folder of the transformers model (config.json + weights)")
    parser.add_argument("dst", help="output folder of the student")
    parser.add_argument("--mixer", default="bimamba2",
                        help="mixer name (default: bimamba2; see cald_speech.mixers)")
    parser.add_argument("--init", default="attention", choices=INITS,
                        help="start mixers from the attention weights or at random")
    parser.add_argument("--keep-attention", type=_parse_layers, default=[],
                        metavar="I,J", help="encoder layers (0-based) left as attention")
    parser.add_argument("--mixer-opt", type=_parse_option, action="append", default=[],
                        metavar="KEY=VALUE", help="mixer option, repeatable (e.g. d_state=64)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into DST even if it already holds a model")
    return add_version(parser)


def main(argv=None):
    """Entry point of ``cald-convert``; returns the exit status.

    Example
    -------
    >>> main(["--help"])  # doctest: +ELLIPSIS
    usage: cald-convert ...
    0
    """
    args, status = parse(build_parser(), argv)
    if args is None:
        return status
    try:
        src, dst = Path(args.src), Path(args.dst)
        config = read_config(src)
        if "cald" in config:
            raise ConfigError(f"{src} already holds a student; convert its teacher instead")
        architectures = config.get("architectures") or []
        if not architectures:
            raise DataError(src / "config.json", "names no architecture",
                            f"add \"architectures\": [one of {', '.join(SUPPORTED_CLASSES)}]")
        model_cls = supported_class(architectures[0])
        if (dst / "config.json").exists() and not args.overwrite:
            raise DataError(dst, "already holds a model", "choose another folder or --overwrite")
        if dst.resolve() == src.resolve():
            raise DataError(dst, "is the source folder", "choose another output folder")
        mixer_cfg = dict(args.mixer_opt)
        hf_config = model_cls.config_class.from_dict(config)
        check_conversion(hf_config, args.mixer, args.init, args.keep_attention, **mixer_cfg)
        teacher = load_model(src)
        student = convert(teacher, mixer=args.mixer, init=args.init,
                          keep_attention=args.keep_attention, **mixer_cfg)
        student.save_pretrained(dst, extra_files_from=src)
    except CaldError as exc:
        return fail("cald-convert", exc)
    layers = student.layer_kinds()
    print(f"{type(teacher).__name__} ({len(layers)} layers) -> student in {dst}")
    print(f"mixer {args.mixer}, init {args.init}, kept attention layers: "
          f"{student.cald['keep_attention'] or 'none'}")
    execution = sorted(set(mixer_cfg) & set(get_mixer_class(args.mixer).execution_options))
    if execution:
        print(f"not saved with the model (execution settings, chosen where it runs; "
              f"the kernel path by ${IMPL_ENV}): {', '.join(execution)}")
    print(format_table(parameter_table(teacher, student)))
    return 0


__all__ = [
    "FAMILIES",
    "PUBLIC_SHAPES",
    "check_conversion",
    "convert",
    "format_table",
    "main",
    "module_kind",
    "parameter_table",
    "public_config",
    "public_parameter_counts",
    "tiny_teacher",
]

if __name__ == "__main__":
    sys.exit(main())
