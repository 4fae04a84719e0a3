"""Transcribing audio of any length with a packaged student or teacher.

A packaged model folder (written by :func:`cald_speech.student.package_model`, as each
recipe does at its end) holds the model (``config.json`` + ``model.safetensors``, a
student or a transformers CTC model), its tokenizer (``tokenizer.json``) and
``cald_info.json``. :meth:`Transcriber.from_pretrained` loads it;
:meth:`Transcriber.transcribe_file`, :meth:`Transcriber.transcribe_batch` and
:meth:`Transcriber.transcribe_waveform` return :class:`Transcript` objects (text, words
with start/end/confidence, the file's original rate and channels) that print as text,
JSON or SRT.

Any format libsndfile reads, any rate and channel count: files are read by
:func:`cald_speech.data.audio.load_audio` (in blocks, downmixed to mono, resampled to
16 kHz). Digital silence gives an empty transcript; unreadable, empty, truncated or
non-audio files raise :class:`~cald_speech.errors.AudioError` naming the file and the fix.

The model's own conventions apply: a hub checkpoint's ``vocab.json`` +
``tokenizer_config.json`` (decoded exactly as ``Wav2Vec2CTCTokenizer.batch_decode``) and
its ``preprocessor_config.json`` (:class:`~cald_speech.preprocessor.WaveformSettings`):
audio is read at the model's ``sampling_rate`` (resampled, and said once at load); with
``do_normalize`` each input is brought to zero mean and unit variance — the whole file
in one-pass and plain mode (as transformers normalises one input), each window on its
own in windowed mode (as if it were a file), each utterance of a padded batch alone.

How long audio is computed (``mode``)
-------------------------------------
``"one-pass"`` (default for students whose every layer is a linear-time mixer)
    The whole file in one pass, with memory bounded by a few copies of the
    ``(T, hidden)`` sequence:

    - the CNN front end runs over blocks of the waveform that overlap by its receptive
      field minus its stride (:func:`cnn_geometry`), which gives exactly the frames of
      a one-shot run (:func:`cnn_features`). A group-norm CNN (wav2vec2-base,
      ``feat_extract_norm="group"``) normalises each channel of its first layer with
      statistics gathered in a first pass over the file: by default those of the 30 s
      around each 10 s block (``norm_window_s``), the span a model trained on single
      utterances expects and the one each window of the windowed mode uses; with
      ``norm_window_s=0`` those of the whole file, exactly as a plain call;
    - the encoder sees the whole sequence at once, without any ``T x T`` mask; its
      time-local parts (feature projection, positional convolution, feed-forward
      blocks) are computed in blocks of frames and BiMamba2 mixers scan their
      sequence block by block with the convolution and SSM states carried in both
      directions (:func:`bimamba2_blockwise`) — the same function as a plain call,
      at a fraction of its memory (see :func:`long_form`).
``"windowed"`` (default for teachers and for students that keep softmax attention)
    Windows of ``window_s`` seconds (default 30) overlapping by ``overlap_s`` seconds
    (default 2) on each side; each window is run as if it were a file of its own (its
    CNN in blocks, as above), its CTC posteriors keep only their centre frames, and
    these are put back together and decoded once (:func:`window_plan`,
    :func:`stitch`).
``"plain"``
    One call of the model on the waveform, as transformers would run it (a reference).

Word timestamps come from the greedy CTC alignment: frame ``t`` starts at ``t *
stride / 16000`` s (``stride`` is the CNN's total stride, 320 samples = 20 ms for
wav2vec2), and a word's confidence is the mean of the frame posteriors of the tokens
aligned to it (:func:`align_words`).

Example
-------
>>> import tempfile, torch
>>> from cald_speech.data.tokenizer import CharTokenizer
>>> from cald_speech.student import convert, package_model
>>> from cald_speech.testing import tiny_teacher
>>> folder = package_model(convert(tiny_teacher(head="ctc", vocab_size=29)),
...                        tempfile.mkdtemp(), CharTokenizer())
>>> asr = Transcriber.from_pretrained(folder)
>>> asr.default_mode(16000 * 3600)
'one-pass'
>>> result = asr.transcribe_waveform(0.1 * torch.randn(16000))
>>> result.duration, result.sample_rate, result.mode
(1.0, 16000, 'one-pass')
"""

import json
import logging
import os

import numpy as np
import torch

from cald_speech.data.audio import SAMPLE_RATE, check_finite, load_audio, resample
from cald_speech.decoding import BeamDecoder, check_beam_options
from cald_speech.errors import AudioError, ConfigError, DataError
from cald_speech.features import (
    base_model,
    enable_feature_input,
    frame_lengths,
    waveform_settings,
)
from cald_speech.inference.align import align_words
from cald_speech.inference.cnn_blocks import (
    _cnn_blocks,
    cnn_features,
    cnn_geometry,
    padded_features,
)
from cald_speech.inference.formats import Transcript
from cald_speech.inference.long_form import (
    DEFAULT_ENCODER_BLOCK,
    lean_ctc_logits,
    lean_supported,
    long_form,
)
from cald_speech.inference.precision import check_precision, compute_precision
from cald_speech.inference.progress import PROGRESS_AFTER_S, progress_bar
from cald_speech.inference.settings import (
    DEFAULT_CNN_BLOCK_S,
    DEFAULT_NORM_WINDOW_S,
    DEFAULT_OVERLAP_S,
    DEFAULT_PROJECTION_CACHE_MB,
    DEFAULT_WINDOW_S,
    MODES,
)
from cald_speech.inference.windows import stitch, window_plan
from cald_speech.student import Student, encoder_layers, load_model, read_config

logger = logging.getLogger(__name__)

#: Peak amplitude below which a whole file counts as silent (-80 dBFS).
SILENCE_PEAK = 1e-4


def model_task(config):
    """The task of a model folder's ``config.json`` dict: ``"ctc"`` or ``"classification"``.

    Example
    -------
    >>> model_task({"architectures": ["Wav2Vec2ForCTC"]})
    'ctc'
    >>> model_task({"cald": {"source_class": "HubertForSequenceClassification"}})
    'classification'
    """
    cald = config.get("cald") if isinstance(config.get("cald"), dict) else {}
    arch = cald.get("source_class") or (
        config.get("architectures") or [""])[0]
    if arch.endswith("ForCTC"):
        return "ctc"
    if arch.endswith("ForSequenceClassification"):
        return "classification"
    return "encoder"


def _length_limits(model):
    """(every layer linear-time, longest input in frames or None) of a model."""
    if not isinstance(model, Student):
        return False, None
    return model.is_linear_time(), model.max_frames()


def as_waveform(wav, sample_rate, target_rate=SAMPLE_RATE):
    """A waveform held in memory as a file read gives it: ``(mono float32 CPU tensor at
    target_rate, {"sample_rate", "channels"})``.

    Example
    -------
    >>> wav, meta = as_waveform(torch.ones(2, 4410), 44100)
    >>> wav.shape, meta
    (torch.Size([1600]), {'sample_rate': 44100, 'channels': 2})
    """
    wav = torch.as_tensor(np.asarray(wav) if not torch.is_tensor(wav) else wav)
    wav = wav.detach().to("cpu", torch.float32)  # as read from a file (a CUDA tensor too)
    channels = 1
    if wav.dim() == 2:
        channels = wav.shape[0]
        wav = wav.mean(dim=0)
    elif wav.dim() != 1:
        raise ConfigError(f"expected a (samples,) or (channels, samples) waveform, got "
                          f"shape {tuple(wav.shape)}")
    check_finite("<waveform>", wav.numpy())
    if sample_rate != target_rate:
        wav = resample(wav, sample_rate, target_rate)
    return wav, {"sample_rate": int(sample_rate), "channels": channels}


class Transcriber:
    """Speech-to-text with a CTC student or teacher, for inputs of any length.

    Arguments
    ---------
    model : Student or transformers.PreTrainedModel
        A CTC model (``...ForCTC`` or a student converted from one), in eval mode.
    tokenizer : CharTokenizer or SentencePieceTokenizer
        Its tokenizer (blank = 0).
    device : str or torch.device
        Where to run.
    window_s, overlap_s : float
        Windowed mode: seconds per window, and context on each side.
    cnn_block_s : float
        One-pass mode: seconds of audio per CNN block.
    encoder_block : int
        One-pass mode: frames per block of the encoder's blockwise parts.
    projection_cache_mb : float
        One-pass mode: memory for the reused in_proj features of a shared-projection
        student (:func:`bimamba2_blockwise`).
    norm_window_s : float or None
        One-pass mode, group-norm CNN (wav2vec2-base style): seconds of audio around
        each CNN block whose statistics normalise it, in whole blocks of
        ``cnn_block_s`` (default 30 s = 3 blocks, the span each window of the windowed
        mode normalises over by default); ``None`` or 0: the whole file, as a plain
        call of the model.
    precision : str
        ``"fp32"`` (default, the reference) or ``"bf16"``: matrix products in bfloat16
        under autocast, everything else in float32
        (:mod:`cald_speech.inference.precision`).
    info : dict, optional
        The folder's ``cald_info.json``.
    beam_size : int, optional
        Decode with a CTC prefix beam search of this width (default: greedy).
    lm : str or os.PathLike, optional
        A KenLM n-gram model (ARPA or binary) fused into the beam search.
    lm_weight, word_bonus : float, optional
        The LM's weight and the score added per word (default: the engine's)
        (:class:`~cald_speech.decoding.BeamDecoder`).
    beam_engine : str
        ``"auto"``, ``"flashlight"`` or ``"speechbrain"``
        (:class:`~cald_speech.decoding.BeamDecoder`).

    Notes
    -----
    The model is moved to ``device``, put in eval mode and prepared with
    :func:`cald_speech.features.enable_feature_input` (it still takes waveforms).

    Example
    -------
    >>> import torch
    >>> from cald_speech.testing import tiny_teacher
    >>> from cald_speech.data.tokenizer import CharTokenizer
    >>> model = tiny_teacher(head="ctc", vocab_size=29)  # CNN stride 20 samples
    >>> asr = Transcriber(model, CharTokenizer(), window_s=0.5, overlap_s=0.1)
    >>> asr.default_mode(16000 * 5), asr.frame_shift
    ('windowed', 0.00125)
    >>> with torch.no_grad():
    ...     plain = asr.log_probs(torch.randn(16000), mode="plain")
    >>> tuple(plain.shape)
    (799, 29)
    """

    def __init__(self, model, tokenizer, device="cpu", window_s=DEFAULT_WINDOW_S,
                 overlap_s=DEFAULT_OVERLAP_S, cnn_block_s=DEFAULT_CNN_BLOCK_S,
                 encoder_block=DEFAULT_ENCODER_BLOCK,
                 projection_cache_mb=DEFAULT_PROJECTION_CACHE_MB,
                 norm_window_s=DEFAULT_NORM_WINDOW_S, precision="fp32",
                 info=None, beam_size=None, lm=None, lm_weight=None, word_bonus=None,
                 beam_engine="auto"):
        self.device = torch.device(device)
        self.precision = check_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.info = dict(info or {})
        config = base_model(model).config
        vocab = getattr(model, "lm_head", None)
        if vocab is None:
            raise ConfigError(f"{type(model).__name__} has no CTC head (lm_head); "
                              "Transcriber needs a ...ForCTC model or a student of one")
        if vocab.out_features != len(tokenizer):
            raise DataError(
                getattr(tokenizer, "vocab_file", None) or "the tokenizer",
                f"the tokenizer has {len(tokenizer)} units but the model's CTC head "
                f"{vocab.out_features} outputs",
                "use the tokenizer files the model was trained with (its vocab.json or "
                "tokenizer.json)")
        self.settings = waveform_settings(model)
        self.rate = self.settings.sampling_rate
        if self.rate != SAMPLE_RATE:
            logger.warning("%s: the model takes %d Hz audio; every input is resampled to "
                           "%d Hz", self.settings.source, self.rate, self.rate)
        self.receptive_field, self.stride = cnn_geometry(config)
        self.frame_shift = self.stride / self.rate
        if window_s * self.rate < self.receptive_field:
            raise ConfigError(f"window_s={window_s} is shorter than one frame")
        if overlap_s < 0:
            raise ConfigError(f"overlap_s must be >= 0, got {overlap_s}")
        self.window_s = float(window_s)
        self.overlap_s = float(overlap_s)
        self.window_frames = int(frame_lengths(model, int(window_s * self.rate)))
        self.context_frames = int(round(overlap_s / self.frame_shift))
        if self.window_frames - 2 * self.context_frames < 1:
            raise ConfigError(
                f"window_s={window_s} must be longer than twice overlap_s={overlap_s}"
            )
        self.cnn_block = max(1, int(cnn_block_s * self.rate) // self.stride)
        self.encoder_block = int(encoder_block)
        if projection_cache_mb < 0:
            raise ConfigError(f"projection_cache_mb must be >= 0, got {projection_cache_mb}")
        self.projection_cache_mb = float(projection_cache_mb)
        if norm_window_s is not None and norm_window_s < 0:
            raise ConfigError(f"norm_window_s must be >= 0 (0: whole file), got {norm_window_s}")
        self.norm_window_s = float(norm_window_s) if norm_window_s else None
        self.norm_blocks = (None if self.norm_window_s is None else
                            max(1, round(self.norm_window_s / cnn_block_s)))
        self.linear, self.max_frames = _length_limits(model)
        self.dtype = next(model.parameters()).dtype
        enable_feature_input(self.model)
        self.decoder = None
        if check_beam_options(beam_size, lm, lm_weight, word_bonus, beam_engine) is not None:
            self.decoder = BeamDecoder(tokenizer, beam_size, lm, lm_weight, word_bonus,
                                       engine=beam_engine)

    @classmethod
    def from_pretrained(cls, folder, device="cpu", **kwargs):
        """Loads a packaged model folder (student or teacher) and its tokenizer.

        Arguments
        ---------
        folder : str or os.PathLike
            ``config.json`` + ``model.safetensors`` + ``tokenizer.json`` (+
            ``cald_info.json``), as written by :func:`cald_speech.student.package_model`.
        device : str
            Where to run.
        **kwargs
            Passed to :class:`Transcriber` (``window_s``, ``overlap_s``, ...).

        Raises
        ------
        DataError, ConfigError
            Missing files, a model without a CTC head, a tokenizer that does not fit.
        """
        from cald_speech.data.tokenizer import load_tokenizer
        from cald_speech.hub import resolve_model_source
        from cald_speech.tasks.intent.model import is_intent_model

        folder = resolve_model_source(folder)
        if is_intent_model(folder):
            raise ConfigError(
                f"{folder} holds an intent model; use Classifier.from_pretrained(folder)"
                ".classify_file(...) (cald-transcribe does so by itself)"
            )
        config = read_config(folder)
        task = model_task(config)
        if task != "ctc":
            raise ConfigError(
                f"{folder} holds {'an' if task[0] in 'aeiou' else 'a'} {task} model "
                "(no CTC head); Transcriber needs a CTC model: fine-tune it first "
                "(recipes/LibriSpeech/ASR), or classify with an intent model"
            )
        tokenizer = load_tokenizer(folder)
        info = {}
        if (folder / "cald_info.json").is_file():
            try:
                info = json.loads((folder / "cald_info.json").read_text())
            except ValueError:
                info = {}
        model = load_model(folder, device=device)
        return cls(model, tokenizer, device=device, info=info, **kwargs)

    # ------------------------------------------------------------------ modes
    def default_mode(self, num_samples):
        """``"one-pass"`` for linear students, else ``"plain"`` within one window or
        ``"windowed"`` beyond it."""
        if self.linear and self._fits(int(frame_lengths(self.model, num_samples))):
            return "one-pass"
        if num_samples <= self.window_s * self.rate:
            return "plain"
        return "windowed"

    def _fits(self, frames):
        return self.max_frames is None or frames <= self.max_frames

    def _resolve(self, mode, num_samples):
        if mode not in MODES:
            raise ConfigError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
        mode = self.default_mode(num_samples) if mode == "auto" else mode
        frames = int(frame_lengths(self.model, num_samples))
        if mode == "windowed":
            frames = min(frames, self.window_frames)  # a window's context included
        if not self._fits(frames):
            limit_s = self.max_frames * self.stride / self.rate
            fix = f"use --mode windowed with --window-s at most {limit_s:.1f}"
            raise ConfigError(
                f"this model's layers take at most {self.max_frames} frames "
                f"({limit_s:.1f} s of audio) in one pass; {mode} mode would give them "
                f"{frames} frames; fix: {fix}, or convert with a larger max_len"
            )
        return mode

    # ------------------------------------------------------------------ posteriors
    def _logits(self, inputs, attention_mask=None):
        out = self.model(inputs, attention_mask=attention_mask)
        return out.logits

    def log_probs(self, wav, mode="auto", progress=False):
        """Frame log posteriors (T, V) of a 16 kHz mono waveform, on the CPU.

        Arguments
        ---------
        wav : torch.Tensor
            (N,) waveform at 16 kHz.
        mode : str
            ``"auto"``, ``"one-pass"``, ``"windowed"`` or ``"plain"`` (module doc).
        progress : bool or None
            Progress bars (``None``: only on a terminal).
        """
        wav = torch.as_tensor(wav).reshape(-1)
        n = wav.numel()
        mode = self._resolve(mode, n)
        vocab = len(self.tokenizer)
        if n < self.receptive_field:
            return torch.zeros(0, vocab)
        total = int(frame_lengths(self.model, n))
        with torch.inference_mode(), compute_precision(self.precision, self.device):
            if mode == "plain":
                wav = self.settings.normalize(wav)
                logits = self._logits(wav[None].to(self.device, self.dtype))[0]
            elif mode == "one-pass":
                logits = self._one_pass(wav, progress)
            else:
                logits = self._windowed(wav, total, progress)
            if logits.shape[0] != total:  # pragma: no cover - would be a bug
                raise RuntimeError(f"{logits.shape[0]} frames of posteriors, expected {total}")
            return torch.log_softmax(logits.float(), dim=-1).cpu()

    def _one_pass(self, wav, progress):
        layers = len(encoder_layers(self.model))
        bar = progress_bar(progress, _cnn_blocks(self.model, wav.numel(), self.cnn_block),
                            "CNN", "block")
        try:
            feats = cnn_features(self.model, wav, self.cnn_block, progress=bar,
                                 norm_blocks=self.norm_blocks)
        finally:
            bar.close()
        bar = progress_bar(progress, layers, "encoder", "layer")
        try:
            if lean_supported(self.model):  # the features are released once projected
                holder = [feats]
                del feats
                return lean_ctc_logits(self.model, holder, self.encoder_block, progress=bar,
                                       projection_cache_mb=self.projection_cache_mb)
            with long_form(self.model, self.encoder_block, progress=bar,
                           projection_cache_mb=self.projection_cache_mb):
                return self._logits(feats[None])[0]
        finally:
            bar.close()

    def _windowed(self, wav, total, progress):
        plan = window_plan(total, self.window_frames, self.context_frames)
        bar = progress_bar(progress if len(plan) > 1 else False, len(plan), "windows", "win")

        def run():
            n = wav.numel()
            for start, end, _, _ in plan:
                stop = n if end == total else (end - 1) * self.stride + self.receptive_field
                feats = cnn_features(self.model, wav[start * self.stride:stop], self.cnn_block)
                yield self._logits(feats[None])[0]
                bar.update(1)

        try:
            return stitch(plan, run())
        finally:
            bar.close()

    # ------------------------------------------------------------------ transcripts
    def _transcript(self, wav, meta, mode, timestamps, progress):
        n = wav.numel()
        duration = n / self.rate
        base = dict(duration=duration, sample_rate=meta.get("sample_rate", SAMPLE_RATE),
                    channels=meta.get("channels", 1), path=meta.get("path"))
        if n == 0 or float(wav.abs().max()) < SILENCE_PEAK:
            return Transcript("", [], mode="silent", **base)
        mode = self._resolve(mode, n)
        if progress is None and duration < PROGRESS_AFTER_S:
            progress = False
        lp = self.log_probs(wav, mode=mode, progress=progress)
        return self._decode(lp, duration, timestamps, mode, base)

    def _decode(self, lp, duration, timestamps, mode, base):
        if self.decoder is not None:
            text, words = self.decoder.decode(lp, self.frame_shift, duration, timestamps)
        elif timestamps:
            text, words = align_words(lp, self.tokenizer, self.frame_shift, duration)
        else:
            text, words = self.tokenizer.decode_ctc(lp.argmax(-1)), []
        return Transcript(text, words, mode=mode, **base)

    def _as_waveform(self, wav, sample_rate):
        return as_waveform(wav, sample_rate, self.rate)

    def transcribe_waveform(self, wav, sample_rate=SAMPLE_RATE, mode="auto", timestamps=True,
                            progress=None):
        """Transcribes a waveform held in memory.

        Arguments
        ---------
        wav : torch.Tensor or numpy.ndarray
            (N,) mono or (channels, N) audio.
        sample_rate : int
            Its rate (resampled to 16 kHz).
        mode : str
            See the module doc; ``"auto"`` picks one-pass for linear students and
            windows (beyond ``window_s``) for the rest.
        timestamps : bool
            Align words (start, end, confidence).
        progress : bool or None
            Progress bars; ``None``: on a terminal, for audio over a minute.

        Returns
        -------
        Transcript
        """
        wav, meta = self._as_waveform(wav, sample_rate)
        return self._transcript(wav, meta, mode, timestamps, progress)

    def transcribe_file(self, path, mode="auto", timestamps=True, progress=None):
        """Transcribes an audio file of any length, format, rate and channel count.

        Arguments
        ---------
        path : str or os.PathLike
            The file.
        mode, timestamps, progress
            As in :meth:`transcribe_waveform`.

        Returns
        -------
        Transcript
            ``sample_rate`` and ``channels`` are the file's own.

        Raises
        ------
        AudioError
            Missing, a directory, empty, truncated, not audio or undecodable.
        """
        wav, meta = load_audio(path, target_sr=self.rate)
        meta["path"] = str(path)
        return self._transcript(wav, meta, mode, timestamps, progress)

    def transcribe_batch(self, items, sample_rate=SAMPLE_RATE, batch_size=8, mode="auto",
                         timestamps=True, errors="raise", progress=None):
        """Transcribes several files or waveforms; short ones share padded batches.

        Inputs that fit in one window (and are not forced into windows) are batched:
        their CNN features are computed one by one (so that group-norm CNNs see each
        input alone, exactly as a single run), padded, and the encoder runs on the batch
        with its padding mask. Longer inputs go through :meth:`transcribe_waveform`.

        Arguments
        ---------
        items : list of (str, os.PathLike, torch.Tensor or numpy.ndarray)
            Files, or waveforms at ``sample_rate``.
        sample_rate : int
            Rate of the waveforms given directly.
        batch_size : int
            Inputs per padded batch.
        mode, timestamps, progress
            As in :meth:`transcribe_waveform`.
        errors : str
            ``"raise"``: the first bad file raises its :class:`AudioError`;
            ``"return"``: its place in the result holds the error and the rest goes on.

        Returns
        -------
        list of Transcript (or AudioError with ``errors="return"``)
        """
        if errors not in ("raise", "return"):
            raise ConfigError(f"errors must be 'raise' or 'return', got {errors!r}")
        results = [None] * len(items)
        pending = []
        for i, item in enumerate(items):
            try:
                if isinstance(item, (str, os.PathLike)):
                    wav, meta = load_audio(item, target_sr=self.rate)
                    meta["path"] = str(item)
                else:
                    wav, meta = self._as_waveform(item, sample_rate)
            except AudioError as exc:
                if errors == "raise":
                    raise
                results[i] = exc
                continue
            n = wav.numel()
            resolved = self._resolve(mode, n) if n else "plain"
            short = n <= self.window_s * self.rate
            silent = n == 0 or float(wav.abs().max()) < SILENCE_PEAK
            if short and not silent and resolved in ("plain", "one-pass") and \
                    n >= self.receptive_field:
                pending.append((i, wav, meta, resolved))
            else:
                results[i] = self._transcript(wav, meta, mode, timestamps, progress)
        for k in range(0, len(pending), max(1, int(batch_size))):
            chunk = pending[k:k + batch_size]
            for (i, wav, meta, resolved), lp in zip(chunk, self._batch_log_probs(chunk)):
                n = wav.numel()
                base = dict(duration=n / self.rate, path=meta.get("path"),
                            sample_rate=meta.get("sample_rate", SAMPLE_RATE),
                            channels=meta.get("channels", 1))
                results[i] = self._decode(lp, n / self.rate, timestamps, resolved, base)
        return results

    def _batch_log_probs(self, chunk):
        with torch.inference_mode(), compute_precision(self.precision, self.device):
            batch, mask, frames = padded_features(
                self.model, [wav for _, wav, _, _ in chunk], self.device, self.cnn_block)
            logits = self._logits(batch, attention_mask=mask)
            lp = torch.log_softmax(logits.float(), dim=-1).cpu()
        return [lp[j, :t] for j, t in enumerate(frames)]
