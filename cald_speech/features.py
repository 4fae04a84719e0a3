"""Frozen-CNN feature caching for HF wav2vec2-style models.

The raw-waveform CNN dominates the cost of a training step on CPU, and CALD keeps it
frozen. Its output depends only on the waveform, on the CNN's weights and on the
precision the CNN runs in (float32, or bfloat16 under autocast), so it is computed once
per utterance — alone, unpadded, so that group-norm CNNs give exactly the features a
single-utterance run gives — and stored on disk under a fingerprint of the CNN's
weights, the model's waveform settings and that precision. Teacher and student share
one cache whenever their CNNs are identical (they are after conversion, and along a
fine-tuning trajectory with the CNN frozen).

A model prepared with :func:`enable_feature_input` accepts such features in place of
waveforms: pass ``input_values`` of shape (B, C, T') and a sample-level
``attention_mask`` as usual.

Example
-------
>>> import torch, tempfile
>>> from transformers import Wav2Vec2Config, Wav2Vec2Model
>>> cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
...     intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
...     num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
>>> model = Wav2Vec2Model(cfg).eval()
>>> cache = FeatureCache(tempfile.mkdtemp())
>>> wavs = [torch.randn(1600), torch.randn(900)]
>>> feats, mask = cache.batch(model, ["a", "b"], wavs)
>>> feats.shape, mask.sum(-1).tolist()
(torch.Size([2, 8, 159]), [1600, 900])
>>> enable_feature_input(model)
>>> out = model(feats, attention_mask=mask).last_hidden_state
>>> ref = model(wavs[1][None]).last_hidden_state
>>> torch.allclose(out[1, : ref.shape[1]], ref[0], atol=1e-5)
True
"""

import contextlib
import hashlib
import os
import sys
import weakref

import torch

from cald_speech.errors import ConfigError
from cald_speech.preprocessor import WaveformSettings


def base_model(model):
    """The bare encoder model (Wav2Vec2Model/HubertModel/WavLMModel) inside ``model``."""
    inner = getattr(model, "base_model", model)
    if not hasattr(inner, "feature_extractor"):
        raise ConfigError(
            f"{type(model).__name__} has no CNN feature extractor; expected a HF "
            "wav2vec2, HuBERT or WavLM model"
        )
    return inner


def set_waveform_settings(model, settings):
    """Records what ``model`` expects of its waveform (a hub ``preprocessor_config.json``).

    Model loaders (:func:`cald_speech.student.load_model`, ``load_strict``, conversion)
    call it; everything that feeds audio to a model reads it back with
    :func:`waveform_settings`.

    Example
    -------
    >>> from cald_speech.testing import tiny_teacher
    >>> m = tiny_teacher()
    >>> waveform_settings(m).do_normalize
    False
    >>> set_waveform_settings(m, WaveformSettings(do_normalize=True))
    >>> waveform_settings(m).do_normalize
    True
    """
    if not isinstance(settings, WaveformSettings):
        raise TypeError(f"expected WaveformSettings, got {type(settings).__name__}")
    base_model(model)._cald_waveform = settings


def waveform_settings(model):
    """What ``model`` expects of its waveform; the defaults (16 kHz, raw) when unset."""
    settings = getattr(base_model(model), "_cald_waveform", None)
    return WaveformSettings() if settings is None else settings


def freeze_feature_encoder(model):
    """Freezes the CNN feature encoder of a wav2vec2, HuBERT or WavLM model or student.

    HF's ``freeze_feature_encoder()`` exists on wav2vec2 and WavLM models but not on
    ``HubertModel``; every family's feature encoder has ``_freeze_parameters()``.

    Example
    -------
    >>> from transformers import HubertConfig, HubertModel
    >>> m = HubertModel(HubertConfig(hidden_size=16, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
    ...     conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4))
    >>> freeze_feature_encoder(m)
    >>> any(p.requires_grad for p in m.feature_extractor.parameters())
    False
    """
    base_model(model).feature_extractor._freeze_parameters()


def record_time_masks(model):
    """Makes ``model`` keep the SpecAugment time mask of its last forward pass.

    After a training-mode forward, ``time_mask(model)`` is the (B, T') bool mask of the
    frames transformers replaced by its learned mask embedding (``None`` when nothing
    was masked). The mask is drawn by transformers' own ``_compute_mask_indices`` with
    the model's config, from the same NumPy random stream as without this wrapper, so
    the masks (and the training run) are unchanged. Idempotent.

    Example
    -------
    >>> import numpy as np
    >>> from cald_speech.testing import tiny_teacher
    >>> m = tiny_teacher(mask_time_prob=0.5, mask_time_length=2).train()
    >>> record_time_masks(m)
    >>> np.random.seed(0); _ = m(torch.randn(1, 4000))
    >>> time_mask(m).shape, bool(time_mask(m).any())
    (torch.Size([1, 199]), True)
    """
    base = base_model(model)
    if getattr(base, "_cald_mask_hidden_states", None) is not None:
        return
    original = base._mask_hidden_states
    compute = sys.modules[type(base).__module__]._compute_mask_indices

    def masking(hidden_states, mask_time_indices=None, attention_mask=None):
        cfg = base.config
        if (mask_time_indices is None and base.training and cfg.mask_time_prob > 0
                and getattr(cfg, "apply_spec_augment", True)):
            mask_time_indices = torch.tensor(
                compute(tuple(hidden_states.shape[:2]), mask_prob=cfg.mask_time_prob,
                        mask_length=cfg.mask_time_length, attention_mask=attention_mask,
                        min_masks=cfg.mask_time_min_masks),
                device=hidden_states.device, dtype=torch.bool)
        base._cald_time_mask = (mask_time_indices if getattr(cfg, "apply_spec_augment", True)
                                else None)
        return original(hidden_states, mask_time_indices=mask_time_indices,
                        attention_mask=attention_mask)

    base._cald_mask_hidden_states = original
    base._mask_hidden_states = masking


def time_mask(model):
    """The time mask of ``model``'s last forward (see :func:`record_time_masks`)."""
    return getattr(base_model(model), "_cald_time_mask", None)


@contextlib.contextmanager
def spec_augment_disabled(model):
    """Turns transformers' SpecAugment masking of ``model`` off inside the block.

    Example
    -------
    >>> from cald_speech.testing import tiny_teacher
    >>> m = tiny_teacher(mask_time_prob=0.5)
    >>> with spec_augment_disabled(m):
    ...     m.config.apply_spec_augment
    False
    >>> m.config.apply_spec_augment
    True
    """
    cfg = base_model(model).config
    before = getattr(cfg, "apply_spec_augment", True)
    cfg.apply_spec_augment = False
    try:
        yield
    finally:
        cfg.apply_spec_augment = before


def cnn_fingerprint(model):
    """A short hash of the CNN feature extractor's weights and structure."""
    fe = base_model(model).feature_extractor
    h = hashlib.sha1()
    for name, t in sorted(fe.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


#: Short names of the dtypes a CNN may run in.
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
               torch.float64: "fp64"}


def cnn_precision(module):
    """The dtype ``module`` computes in here and now: the autocast dtype of its device
    when autocast is on there, else its parameters' dtype (``"fp32"``, ``"bf16"``, ...).

    Example
    -------
    >>> conv = torch.nn.Conv1d(1, 2, 3)
    >>> cnn_precision(conv)
    'fp32'
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     cnn_precision(conv)
    'bf16'
    """
    param = next(module.parameters(), None)
    device = "cpu" if param is None else param.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = torch.float32 if param is None else param.dtype
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _feature_forward(self, input_values):
    # Precomputed CNN output (B, C, T') passes through; waveforms (B, N) go to the CNN.
    if input_values.dim() == 3:
        return input_values
    return self._cald_cnn_forward(input_values)


def enable_feature_input(model):
    """Lets ``model`` accept precomputed CNN features (B, C, T') as ``input_values``.

    Waveforms (B, N) still work. Parameter names and the state dict are unchanged.
    Idempotent.
    """
    fe = base_model(model).feature_extractor
    if getattr(fe, "_cald_cnn_forward", None) is None:
        fe._cald_cnn_forward = fe.forward
        fe.forward = _feature_forward.__get__(fe)
    return None


def frame_lengths(model, num_samples):
    """Number of CNN frames for each waveform length (tensor or int)."""
    n = torch.as_tensor(num_samples)
    return base_model(model)._get_feat_extract_output_lengths(n).long()


def pad_features(feats, num_samples, device=None):
    """Zero-padded CNN features of a batch and its sample-level attention mask.

    The features of each utterance are computed alone (unpadded), so that a group-norm
    CNN gives each one exactly its single-utterance features; the encoder then takes
    the padded batch with the mask of the waveforms' real samples.

    Arguments
    ---------
    feats : list of torch.Tensor
        (C, T'_i) features, one per utterance.
    num_samples : list of int
        Samples of each utterance's waveform.
    device : str or torch.device, optional
        Where the mask goes (default: the features' device).

    Returns
    -------
    features : torch.Tensor
        (B, C, T'max), zero beyond each utterance's frames.
    mask : torch.Tensor
        (B, Nmax) long, 1 on real samples.

    Example
    -------
    >>> feats, mask = pad_features([torch.ones(2, 3), torch.ones(2, 1)], [70, 30])
    >>> feats[1].tolist(), mask.sum(-1).tolist()
    ([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], [70, 30])
    """
    out = feats[0].new_zeros(len(feats), feats[0].shape[0], max(f.shape[-1] for f in feats))
    for i, f in enumerate(feats):
        out[i, :, : f.shape[-1]] = f
    device = feats[0].device if device is None else device
    mask = torch.zeros(len(num_samples), max(num_samples), dtype=torch.long, device=device)
    for i, n in enumerate(num_samples):
        mask[i, :n] = 1
    return out, mask


class FeatureCache:
    """Per-utterance cache of frozen-CNN features, on disk (or in memory).

    Arguments
    ---------
    folder : str or None
        Where to store ``<fingerprint>/<utt_id>.pt``; ``None`` keeps features in memory.
    dtype : torch.dtype
        Storage type (float32 keeps results identical to a live CNN).
    """

    def __init__(self, folder=None, dtype=torch.float32):
        self.folder = None if folder is None else str(folder)
        self.dtype = dtype
        self._mem = {}
        self._fp = weakref.WeakKeyDictionary()
        self.hits = 0  # features served without running the CNN

    def fingerprint(self, model):
        """The CNN fingerprint of ``model`` (computed once per CNN module), what its
        waveform settings change in the CNN's input (``-norm`` / ``-raw``) and the
        precision the CNN runs in here (``-fp32``; ``-bf16`` under bf16 autocast): a
        CNN run in bfloat16 gives other features, which a float32 run must not get.

        Example
        -------
        >>> from cald_speech.testing import tiny_teacher
        >>> m, cache = tiny_teacher(), FeatureCache()
        >>> fp32 = cache.fingerprint(m)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     bf16 = cache.fingerprint(m)
        >>> fp32[-9:], bf16[-9:], fp32[:-5] == bf16[:-5]
        ('-raw-fp32', '-raw-bf16', True)
        """
        fe = base_model(model).feature_extractor
        if fe not in self._fp:
            self._fp[fe] = cnn_fingerprint(model)
        return (f"{self._fp[fe]}-{waveform_settings(model).cache_key()}"
                f"-{cnn_precision(fe)}")

    @torch.no_grad()
    def features(self, model, utt_id, wav):
        """CNN features (C, T') of one unpadded waveform (N,), from cache or computed.

        The waveform is given as read (16 kHz); the model's
        :func:`waveform_settings` (per-utterance normalisation) are applied here, and
        are part of the cache key, as is the precision the CNN runs in here. An entry
        is used only when it was computed from the same CNN and the same samples (a
        digest of the waveform is stored with it): a corpus re-synthesised or repaired
        under the same IDs gets fresh features.
        """
        fp = self.fingerprint(model)
        safe = str(utt_id).replace(os.sep, "_")
        path = None if self.folder is None else os.path.join(self.folder, fp, safe + ".pt")
        audio = hashlib.blake2b(wav.detach().cpu().contiguous().numpy().tobytes(),
                                digest_size=16).hexdigest()
        key = (fp, safe, audio)
        if path is None and key in self._mem:
            self.hits += 1
            return self._mem[key]
        if path is not None and os.path.exists(path):
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a damaged or foreign file: computed again below
                entry = None
            if isinstance(entry, dict) and entry.get("audio") == audio:
                self.hits += 1
                return entry["features"]
        fe = base_model(model).feature_extractor
        run = getattr(fe, "_cald_cnn_forward", fe.forward)
        dev = next(fe.parameters()).device
        wav = waveform_settings(model).normalize(wav.reshape(-1))
        feats = run(wav.reshape(1, -1).to(dev)).squeeze(0).to("cpu", self.dtype)
        if path is None:
            self._mem[key] = feats
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            torch.save({"features": feats, "audio": audio}, tmp)
            os.replace(tmp, path)
        return feats

    def batch(self, model, utt_ids, wavs):
        """Padded features (B, C, T'max) and the sample-level attention mask (B, Nmax).

        Arguments
        ---------
        model : transformers.PreTrainedModel
            Model whose CNN produces the features.
        utt_ids : list of str
            Cache keys, one per waveform.
        wavs : list of torch.Tensor
            Unpadded waveforms (N_i,).
        """
        feats = [self.features(model, u, w).float() for u, w in zip(utt_ids, wavs)]
        return pad_features(feats, [int(w.shape[-1]) for w in wavs])
