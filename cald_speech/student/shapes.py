"""Architecture settings of public checkpoints, at full size or shrunk.

:func:`public_config` builds the transformers config of one of :data:`PUBLIC_SHAPES`
(wav2vec2-base, wav2vec2-large-lv60, hubert-large-ll60k, wavlm-base-plus): at full size
for parameter counts (:func:`~cald_speech.student.report.public_parameter_counts`) and
speed benchmarks, or with the widths of :data:`TINY` for tests and smoke runs.
"""

from cald_speech.errors import ConfigError
from cald_speech.families import family_config_class

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

#: Widths that shrink a public shape for tests, examples and smoke runs (structure
#: flags kept).
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
