"""Spoken intent classification with a packaged intent model (the SLURP recipe's).

:class:`Classifier` reads audio as :class:`~cald_speech.inference.Transcriber` does (any
format, rate and channel count) and runs the CNN on each waveform alone before the
padded batch goes through the encoder and the intent heads.
"""

from pathlib import Path

import torch

from cald_speech.data.audio import SAMPLE_RATE, load_audio
from cald_speech.errors import AudioError, ConfigError
from cald_speech.features import enable_feature_input
from cald_speech.inference.cnn_blocks import padded_features
from cald_speech.inference.precision import compute_precision
from cald_speech.inference.transcriber import as_waveform, model_task
from cald_speech.student import read_config


class Classifier:
    """Spoken intent classification with a packaged intent model (student or teacher).

    Arguments
    ---------
    model : cald_speech.tasks.intent.model.IntentModel
        The model (its encoder a student or a transformer).
    device : str or torch.device
        Where to run.

    Example
    -------
    >>> import tempfile, torch
    >>> from cald_speech.testing import tiny_teacher
    >>> from cald_speech.tasks.intent.labels import LabelMaps
    >>> from cald_speech.tasks.intent.model import IntentModel
    >>> labels = LabelMaps({"alarm_set": ("alarm", "set"), "play_music": ("play", "music")})
    >>> folder = tempfile.mkdtemp()
    >>> IntentModel.new(tiny_teacher(), labels).save_pretrained(folder)
    >>> clf = Classifier.from_pretrained(folder)
    >>> out = clf.classify_waveform(torch.randn(2, 22050), sample_rate=44100)
    >>> out["scenario"] in ("alarm", "play"), out["sample_rate"], out["channels"]
    (True, 44100, 2)
    >>> sorted(out["confidence"])
    ['action', 'scenario']
    """

    def __init__(self, model, device="cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        enable_feature_input(self.model.encoder)

    @classmethod
    def from_pretrained(cls, folder, device="cpu"):
        """Loads an intent model folder (written by ``IntentModel.save_pretrained``).

        Raises
        ------
        ConfigError
            The folder holds a CTC model (use :class:`Transcriber`).
        DataError
            Missing or unreadable files.
        """
        from cald_speech.tasks.intent.model import IntentModel, is_intent_model

        folder = Path(folder)
        if not is_intent_model(folder) and (folder / "config.json").is_file():
            raise ConfigError(f"{folder} holds a {model_task(read_config(folder))} model, "
                              "not an intent model; use Transcriber for CTC models")
        return cls(IntentModel.from_pretrained(folder, device=device), device=device)

    @torch.inference_mode()
    def _classify(self, waveforms):
        """Labels and confidences (softmax probability of each chosen label).

        The CNN runs on each waveform alone (group-norm front ends would otherwise see
        the padding), then the features share one padded batch.
        """
        x, mask, _ = padded_features(self.model.encoder, waveforms, self.device)
        with compute_precision("fp32", self.device):
            logits = self.model(x, attention_mask=mask).logits
        labels = self.model.predict(logits)
        probs = {t: p.float().softmax(-1) for t, p in self.model.split_logits(logits).items()}
        for i, lab in enumerate(labels):
            lab["confidence"] = {
                t: float(p[i, self.model.labels.index(t, lab[t])]) for t, p in probs.items()
            }
        return labels

    def classify_waveform(self, wav, sample_rate=SAMPLE_RATE):
        """Intent, scenario, action and confidences of one waveform held in memory.

        Arguments
        ---------
        wav : torch.Tensor or numpy.ndarray
            (N,) mono or (channels, N) audio.
        sample_rate : int
            Its rate (resampled to 16 kHz; the original is reported).
        """
        wav, meta = as_waveform(wav, sample_rate)
        if wav.numel() == 0:
            raise AudioError("<waveform>", "empty waveform", "give at least a few samples")
        out = self._classify([wav])[0]
        return {**out, **meta, "duration": wav.numel() / SAMPLE_RATE}

    def classify_file(self, path):
        """Intent, scenario, action and confidences of an audio file of any format.

        Raises
        ------
        AudioError
            Missing, a directory, empty, truncated, not audio or undecodable.
        """
        wav, meta = load_audio(path)
        out = self._classify([wav])[0]
        return {**out, "path": str(path), "sample_rate": meta["sample_rate"],
                "channels": meta["channels"], "duration": wav.numel() / SAMPLE_RATE}

    def classify_batch(self, paths, batch_size=8, errors="raise"):
        """Classifies several files in padded batches.

        Arguments
        ---------
        paths : list of str
            Audio files.
        batch_size : int
            Files per batch.
        errors : str
            ``"raise"``, or ``"skip"``: a bad file gets ``{"path", "error"}`` and the
            others go on.
        """
        results = [None] * len(paths)
        loaded = []
        for i, path in enumerate(paths):
            try:
                wav, meta = load_audio(path)
            except AudioError as exc:
                if errors != "skip":
                    raise
                results[i] = {"path": str(path), "error": str(exc)}
                continue
            loaded.append((i, wav, meta))
        loaded.sort(key=lambda t: t[1].numel())   # similar lengths share a batch
        for start in range(0, len(loaded), batch_size):
            chunk = loaded[start:start + batch_size]
            for (i, wav, meta), lab in zip(chunk, self._classify([w for _, w, _ in chunk])):
                results[i] = {**lab, "path": str(paths[i]), "sample_rate": meta["sample_rate"],
                              "channels": meta["channels"],
                              "duration": wav.numel() / SAMPLE_RATE}
        return results
