"""Where the parameters go: teacher and student parameters per module kind.

:func:`parameter_table` counts, per kind of module, the parameters transferred unchanged,
kept (softmax attention left in place), dropped (attention replaced by a mixer) and new
(mixers); :func:`format_table` prints it (``cald-convert`` does);
:func:`public_parameter_counts` gives the totals at the sizes of public checkpoints.
"""

from cald_speech.families import family_class
from cald_speech.student.conversion import convert
from cald_speech.student.shapes import PUBLIC_SHAPES, public_config

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
    student : cald_speech.student.model.Student
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
    >>> from cald_speech.student import convert
    >>> from cald_speech.testing import tiny_teacher
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
        As in :func:`~cald_speech.student.conversion.convert`.
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
