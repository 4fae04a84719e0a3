"""What a model expects of its waveform: a hub checkpoint's ``preprocessor_config.json``.

transformers' ``Wav2Vec2FeatureExtractor`` turns audio into a model's ``input_values``
with three settings that matter, saved with every hub checkpoint in
``preprocessor_config.json`` (or, from transformers 5, inside ``processor_config.json``):

``sampling_rate``
    The rate the model was trained at (16000 for every public wav2vec2, HuBERT and WavLM).
``do_normalize``
    Zero mean and unit variance per utterance, ``(x - mean) / sqrt(var + 1e-7)`` over its
    real samples (wav2vec2-base-960h, wav2vec2-large-lv60, HuBERT-large, XLS-R).
``return_attention_mask``
    Whether the model was trained with a padding mask. transformers gives models trained
    without one (``false``: wav2vec2-base) zero-padded batches *without* a mask; that
    lets padded frames into every item's attention, so a padded batch no longer gives
    each item its single-utterance result. cald-speech computes each utterance's CNN
    features alone and masks the padding in the encoder for every model, which gives
    exactly the single-utterance result (tested); the setting is kept and saved, not
    used to degrade batches.

:class:`WaveformSettings` reads, applies and saves them; a folder without the file gets
the defaults of the project's own models (16 kHz, no normalisation), i.e. what it did
before these settings were read.

Example
-------
>>> import torch
>>> s = WaveformSettings(do_normalize=True)
>>> y = s.normalize(torch.tensor([1.0, 2.0, 3.0, 4.0]))
>>> [round(v, 4) for v in y.tolist()]
[-1.3416, -0.4472, 0.4472, 1.3416]
>>> s.cache_key(), WaveformSettings().cache_key()
('norm', 'raw')
"""

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cald_speech.errors import DataError

PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"
#: The variance floor of transformers' ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``.
NORM_EPS = 1e-7
KIND = "a feature extractor configuration"
#: Feature extractor classes whose output is the (normalised) waveform itself.
WAVEFORM_EXTRACTORS = ("Wav2Vec2FeatureExtractor",)


@dataclass(frozen=True)
class WaveformSettings:
    """The input a model expects: rate, per-utterance normalisation, padding mask.

    Arguments
    ---------
    sampling_rate : int
        Samples per second the model was trained at.
    do_normalize : bool
        Zero mean and unit variance per utterance (per window in windowed transcription).
    return_attention_mask : bool
        Whether the model was trained with a padding mask (kept and saved; see the
        module doc for what padded batches get).
    padding_value : float
        The value transformers pads with (kept and saved).
    source : str, optional
        The file the settings were read from (not part of equality).
    """

    sampling_rate: int = 16000
    do_normalize: bool = False
    return_attention_mask: bool = True
    padding_value: float = 0.0
    source: str = field(default=None, compare=False)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_folder(cls, folder):
        """The settings of a model folder (defaults when it has no preprocessor file).

        Raises
        ------
        DataError
            A malformed file, a feature extractor that is not a waveform one
            (``feature_size`` != 1, log-mel extractors), a non-positive rate.

        Example
        -------
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> WaveformSettings.from_folder(d) == WaveformSettings()
        True
        >>> WaveformSettings(do_normalize=True).save(d)
        '...preprocessor_config.json'
        >>> WaveformSettings.from_folder(d).do_normalize
        True
        """
        folder = Path(folder)
        path = folder / PREPROCESSOR_FILE
        if path.is_file():
            return cls.from_dict(read_model_json(path, KIND), path)
        path = folder / PROCESSOR_FILE
        if path.is_file():
            data = read_model_json(path, KIND)
            if isinstance(data.get("feature_extractor"), dict):
                return cls.from_dict(data["feature_extractor"], path)
        return cls()

    @classmethod
    def from_dict(cls, data, path="<preprocessor config>"):
        """Settings from a ``preprocessor_config.json`` dict, checked."""
        kind = data.get("feature_extractor_type")
        if kind is not None and kind not in WAVEFORM_EXTRACTORS:
            raise DataError(path, f"names feature_extractor_type {kind!r}; cald-speech's "
                            "wav2vec2 / HuBERT / WavLM models take the waveform itself "
                            f"({', '.join(WAVEFORM_EXTRACTORS)})",
                            "use the preprocessor_config.json of a wav2vec2-style checkpoint")
        size = data.get("feature_size", 1)
        if size != 1:
            raise DataError(path, f"has feature_size {size}; these models take one value "
                            "per sample (a mono waveform, feature_size 1)",
                            "use the preprocessor_config.json saved with this wav2vec2-style "
                            "model (feature_size 1)")
        rate = data.get("sampling_rate", 16000)
        if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
            raise DataError(path, f"has sampling_rate {rate!r}", "give a positive integer rate")
        try:
            padding = float(data.get("padding_value", 0.0))
        except (TypeError, ValueError):
            raise DataError(path, f"has padding_value {data.get('padding_value')!r}",
                            "give a number (0.0)") from None
        return cls(sampling_rate=rate, do_normalize=bool(data.get("do_normalize", False)),
                   return_attention_mask=bool(data.get("return_attention_mask", True)),
                   padding_value=padding, source=str(path))

    def to_dict(self):
        """The ``preprocessor_config.json`` content (transformers' format)."""
        d = {k: v for k, v in asdict(self).items() if k != "source"}
        return {"do_normalize": d["do_normalize"],
                "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
                "padding_side": "right", "padding_value": d["padding_value"],
                "return_attention_mask": d["return_attention_mask"],
                "sampling_rate": d["sampling_rate"]}

    def save(self, folder):
        """Writes ``preprocessor_config.json`` into ``folder``; returns its path.

        A file already there that holds these settings (e.g. copied from the source
        checkpoint) is kept as it is.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / PREPROCESSOR_FILE
        try:
            if path.is_file() and WaveformSettings.from_folder(folder) == self:
                return str(path)
        except DataError:
            pass  # a damaged file: replaced below
        tmp = folder / f".{PREPROCESSOR_FILE}.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return str(path)

    def cache_key(self):
        """What the settings change in a CNN's output: ``"norm"`` or ``"raw"`` (and the
        rate when it is not 16 kHz, e.g. ``"raw8000"``)."""
        key = "norm" if self.do_normalize else "raw"
        return key if self.sampling_rate == 16000 else f"{key}{self.sampling_rate}"

    # ------------------------------------------------------------------ applying
    def affine(self, wav):
        """``(shift, scale)`` such that the model's input is ``(wav - shift) * scale``.

        ``(0, 1)`` without normalisation; otherwise the utterance's mean and
        ``1 / sqrt(var + 1e-7)``, accumulated in float64 (one pass, no copy).
        """
        if not self.do_normalize or wav.numel() == 0:
            return 0.0, 1.0
        var, mean = torch.var_mean(wav.reshape(-1).to(torch.float64), correction=0)
        return float(mean), 1.0 / math.sqrt(float(var) + NORM_EPS)

    def normalize(self, wav):
        """The model's input for one unpadded utterance (a new float32 tensor when
        normalising, ``wav`` itself otherwise)."""
        if not self.do_normalize:
            return wav
        shift, scale = self.affine(wav)
        return ((wav.to(torch.float64) - shift) * scale).to(torch.float32)

    def normalize_padded(self, wavs, lengths):
        """Normalises each row of a zero-padded batch over its first ``lengths[i]``
        samples; the padding stays ``padding_value``.

        Example
        -------
        >>> import torch
        >>> s = WaveformSettings(do_normalize=True)
        >>> batch = torch.tensor([[1.0, 3.0, 0.0], [2.0, 4.0, 6.0]])
        >>> s.normalize_padded(batch, [2, 3])[0].tolist()
        [-0.9999999403953552, 0.9999999403953552, 0.0]
        """
        if not self.do_normalize:
            return wavs
        out = torch.full_like(wavs, self.padding_value)
        for i, n in enumerate(int(k) for k in lengths):
            out[i, :n] = self.normalize(wavs[i, :n])
        return out


def read_model_json(path, kind):
    """A model folder's JSON file holding an object (``kind`` names it in errors).

    Example
    -------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "vocab.json"
    >>> _ = p.write_text("[1]")
    >>> read_model_json(p, "a vocabulary")
    Traceback (most recent call last):
      ...
    cald_speech.errors.DataError: ...vocab.json: holds a list, not a vocabulary (fix: ...)
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})",
                        "copy the file again from the model's hub page") from None
    if not isinstance(data, dict):
        raise DataError(path, f"holds a {type(data).__name__}, not {kind}",
                        "copy the file again from the model's hub page")
    return data
