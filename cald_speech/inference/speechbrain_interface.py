"""Packaged models through SpeechBrain's own interfaces (``from_hparams``, ``foreign_class``).

:func:`cald_speech.student.package_model` writes a ``hyperparams.yaml`` into every CTC and
intent model folder (:mod:`cald_speech.student.speechbrain_files`) that names the classes
below, so that SpeechBrain users load a packaged model the way they load any hub model::

    from speechbrain.inference.ASR import EncoderASR
    asr = EncoderASR.from_hparams(source="results/model", savedir="pretrained/model")
    asr.transcribe_file("speech.wav")

    from speechbrain.inference.interfaces import foreign_class
    slu = foreign_class(source="results/intent", pymodule_file="custom.py",
                        classname="CaldIntentClassifier", savedir="pretrained/intent")
    slu.classify_file("speech.wav")["intent"]

The pieces:

:class:`FolderPretrainer`
    SpeechBrain's :class:`~speechbrain.utils.parameter_transfer.Pretrainer` whose
    ``paths`` (and extra ``files``) are files of the model folder itself, relative to the
    ``source`` given to ``from_hparams``; they are collected into ``savedir`` under their
    own names (symlinks for a local folder), so the folder stays relocatable and
    ``savedir`` is itself a model folder that ``cald-transcribe`` reads.
:class:`CTCEncoder`
    The ``encoder`` module of :class:`~speechbrain.inference.ASR.EncoderASR`: padded
    waveforms and relative lengths → CTC log-posteriors, computed by
    :class:`~cald_speech.inference.Transcriber` exactly as ``cald-transcribe`` does (one
    file: :meth:`Transcriber.transcribe_file`'s one-pass / windowed / plain choice; a
    batch: :meth:`Transcriber.transcribe_batch`'s padded batches). Its parameter
    transfer hook reads ``model.safetensors`` (SpeechBrain's default hook would use
    ``torch.load``).
:class:`CTCTokenizer`
    The ``tokenizer``: ``decode_ids`` of the folder's own tokenizer
    (:func:`cald_speech.data.tokenizer.load_tokenizer`).
:class:`AudioNormalizer`
    Down-mixing and resampling to the model's rate as
    :func:`cald_speech.data.audio.load_audio` does, with its check for non-finite samples.
:class:`IntentModule`, :class:`CaldIntentClassifier`
    An intent model (:class:`~cald_speech.inference.Classifier`) as a SpeechBrain
    :class:`~speechbrain.inference.interfaces.Pretrained` interface.

Example
-------
>>> import os, tempfile, torch
>>> from speechbrain.inference.ASR import EncoderASR
>>> from cald_speech.data.tokenizer import CharTokenizer
>>> from cald_speech.student import convert, package_model
>>> from cald_speech.testing import tiny_teacher
>>> folder = package_model(convert(tiny_teacher(head="ctc", vocab_size=29)),
...                        tempfile.mkdtemp(), CharTokenizer())
>>> asr = EncoderASR.from_hparams(source=folder, savedir=tempfile.mkdtemp())
>>> wav = 0.1 * torch.randn(16000)
>>> words, _ = asr.transcribe_batch(wav[None], torch.ones(1))
>>> words[0] == Transcriber.from_pretrained(folder).transcribe_waveform(
...     wav, timestamps=False).text
True
"""

import os
from pathlib import Path

import torch
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.checkpoints import mark_as_transfer, register_checkpoint_hooks
from speechbrain.utils.fetching import FetchConfig, LocalStrategy, fetch
from speechbrain.utils.parameter_transfer import Pretrainer

from cald_speech.data.audio import SAMPLE_RATE, check_finite, resample
from cald_speech.errors import ConfigError
from cald_speech.inference.classifier import Classifier
from cald_speech.inference.progress import PROGRESS_AFTER_S
from cald_speech.inference.transcriber import SILENCE_PEAK, Transcriber

#: Log-probability of the non-blank units on frames past an utterance's end.
PAD_LOG_PROB = -1e4


def folder_tokenizer(folder):
    """The tokenizer of a model folder (the project's ``tokenizer.json`` or a hub vocabulary).

    Example
    -------
    >>> import tempfile
    >>> from cald_speech.data.tokenizer import CharTokenizer
    >>> d = tempfile.mkdtemp(); _ = CharTokenizer().save(d)
    >>> len(folder_tokenizer(d))
    29
    """
    from cald_speech.data.tokenizer import load_tokenizer

    return load_tokenizer(Path(folder))


class FolderPretrainer(Pretrainer):
    """SpeechBrain's :class:`Pretrainer` for files of the model folder itself.

    Every entry of ``paths`` and ``files`` is a path relative to the ``source`` handed to
    ``from_hparams`` (a local folder, a hub id or a URL): the folder keeps its own file
    names (``model.safetensors``, ``config.json``, ...) instead of SpeechBrain's
    ``<loadable>.ckpt``, and can be copied or uploaded anywhere. Files are collected into
    ``collect_in`` (``savedir``) under the same relative names, so that each load hook
    finds the other files of the folder beside the one it is given.

    Arguments
    ---------
    collect_in : str or os.PathLike, optional
        Where to collect the files (``from_hparams`` sets it to ``savedir``).
    loadables : dict
        Name → object with a transfer hook.
    paths : dict
        Name → file of the folder handed to that object's hook (default:
        ``<name>.ckpt``, as SpeechBrain's).
    files : list of str
        Further files of the folder that the hooks read (configs, tokenizer files).
    custom_hooks, conditions : dict, optional
        As for :class:`Pretrainer`.

    Example
    -------
    >>> import pathlib, tempfile
    >>> src, dst = pathlib.Path(tempfile.mkdtemp()), pathlib.Path(tempfile.mkdtemp())
    >>> (src / "sub").mkdir(); _ = (src / "sub" / "a.json").write_text("{}")
    >>> _ = (src / "w.bin").write_text("w")
    >>> loaded = []
    >>> pre = FolderPretrainer(dst, {"w": object()}, {"w": "w.bin"}, files=["sub/a.json"],
    ...                        custom_hooks={"w": lambda obj, path: loaded.append(path)})
    >>> sorted(p.name for p in pre.collect_files(default_source=str(src)).values())
    ['w.bin']
    >>> (dst / "sub" / "a.json").is_file()
    True
    >>> pre.load_collected(); pathlib.Path(loaded[0]).parent == dst
    True
    """

    def __init__(self, collect_in=None, loadables=None, paths=None, files=(),
                 custom_hooks=None, conditions=None):
        super().__init__(collect_in=collect_in, loadables=loadables, paths=paths,
                         custom_hooks=custom_hooks, conditions=conditions)
        self.files = [str(f) for f in (files or ())]
        for rel in [*self.paths.values(), *self.files]:
            _check_relative(rel)

    def _fetch(self, rel, source, local_strategy, fetch_config):
        if self.collect_in is not None:  # fetch makes savedir, not its sub-folders
            (self.collect_in / rel).parent.mkdir(parents=True, exist_ok=True)
        return fetch(filename=rel, source=source, savedir=self.collect_in, save_filename=rel,
                     local_strategy=local_strategy, fetch_config=fetch_config)

    def collect_files(self, default_source=None, local_strategy=LocalStrategy.SYMLINK,
                      fetch_config=None):
        """Fetches the folder's files from ``default_source`` (the model folder).

        Returns
        -------
        dict
            Loadable name → local path of its file.
        """
        if default_source is None:
            raise ConfigError("FolderPretrainer needs the model folder: call "
                              "collect_files(default_source=<folder, hub id or URL>)")
        fetch_config = FetchConfig() if fetch_config is None else fetch_config
        if self.collect_in is not None:
            self.collect_in.mkdir(parents=True, exist_ok=True)
        for rel in self.files:
            self._fetch(rel, default_source, local_strategy, fetch_config)
        collected = {}
        for name in self.loadables:
            if not self.is_loadable(name):
                continue
            rel = self.paths.get(name, f"{name}.ckpt")
            collected[name] = self._fetch(rel, default_source, local_strategy, fetch_config)
            self.paths[name] = str(collected[name])
            self.is_local.append(name)
        return collected


def _check_relative(rel):
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or "://" in rel or ".." in parts:
        raise ConfigError(f"FolderPretrainer path {rel!r} must be a file of the model "
                          "folder, relative to it (e.g. model.safetensors)")


class AudioNormalizer:
    """Mono audio at the model's rate, as :func:`cald_speech.data.audio.load_audio` makes it.

    Channels are averaged, non-finite samples raise an
    :class:`~cald_speech.errors.AudioError`, other rates are resampled with the same
    resampler; SpeechBrain's ``Pretrained.load_audio`` calls it on what it read.

    Arguments
    ---------
    sample_rate : int
        The model's rate (the YAML's ``sample_rate``, from ``preprocessor_config.json``).

    Example
    -------
    >>> AudioNormalizer()(torch.ones(44100, 2), 44100).shape
    torch.Size([16000])
    """

    def __init__(self, sample_rate=SAMPLE_RATE):
        self.sample_rate = int(sample_rate)

    def __call__(self, audio, sample_rate):
        """(frames,) or (frames, channels) audio at ``sample_rate`` → (frames,) on the CPU."""
        audio = torch.as_tensor(audio).detach().float().cpu()
        if audio.dim() == 2:
            audio = audio.mean(dim=1) if audio.shape[1] > 1 else audio[:, 0]
        elif audio.dim() != 1:
            raise ConfigError(f"expected (frames,) or (frames, channels) audio, got shape "
                              f"{tuple(audio.shape)}")
        check_finite("<audio>", audio.numpy())
        return resample(audio, int(sample_rate), self.sample_rate).contiguous()


@register_checkpoint_hooks
class CTCTokenizer:
    """The folder's tokenizer with the interface ``EncoderASR`` decodes with.

    Its transfer hook loads :func:`folder_tokenizer` of the folder that holds the file
    it is given. ``decode_ids`` takes ids that greedy CTC decoding already collapsed.

    Example
    -------
    >>> import tempfile
    >>> from cald_speech.data.tokenizer import CharTokenizer
    >>> tok = CTCTokenizer()
    >>> tok.load(CharTokenizer().save(tempfile.mkdtemp()))
    >>> tok.decode_ids([3, 2, 21, 1, 4]), len(tok), tok.blank_id
    ('BAT C', 29, 0)
    """

    def __init__(self):
        self.tokenizer = None

    @mark_as_transfer
    def load(self, path):
        """Transfer hook: the tokenizer of the folder holding ``path``."""
        self.tokenizer = folder_tokenizer(Path(path).parent)

    def _loaded(self):
        if self.tokenizer is None:
            raise ConfigError("the tokenizer is not loaded; load the model with "
                              "EncoderASR.from_hparams(source=<model folder>, savedir=...)")
        return self.tokenizer

    @property
    def blank_id(self):
        """The CTC blank (0)."""
        return self._loaded().blank_id

    def __len__(self):
        return len(self._loaded())

    def decode_ids(self, ids):
        """Collapsed CTC ids (blanks allowed, dropped) → text."""
        return self._loaded().decode(ids)

    def decode_ctc(self, frame_ids):
        """Frame-level argmax ids → text (repeats collapsed, blanks dropped)."""
        return self._loaded().decode_ctc(frame_ids)


def _sync_device(runtime, module):
    """Points a Transcriber's or Classifier's device at where ``module``'s weights are."""
    param = next(module.parameters(), None)
    if param is not None and runtime.device != param.device:
        runtime.device = param.device
    return runtime


def _utterances(wavs, wav_lens):
    """A padded (B, T) or (B, T, C) batch and relative lengths → list of (N_i,) float."""
    wavs = torch.as_tensor(wavs)
    if wavs.dim() == 1:
        wavs = wavs[None]
    if wavs.dim() == 3:
        wavs = wavs.float().mean(dim=-1)
    if wavs.dim() != 2:
        raise ConfigError(f"expected a (batch, time) batch of waveforms, got shape "
                          f"{tuple(wavs.shape)}")
    total = wavs.shape[1]
    if wav_lens is None:
        wav_lens = torch.ones(wavs.shape[0])
    lens = torch.round(torch.as_tensor(wav_lens).float().cpu() * total).long()
    lens = lens.clamp(0, total).tolist()
    out = []
    for i, n in enumerate(lens):
        wav = wavs[i, :n].float()
        check_finite(f"<waveform {i}>", wav.detach().cpu().numpy())
        out.append(wav)
    return out


@register_checkpoint_hooks
class CTCEncoder(torch.nn.Module):
    """The ``encoder`` of ``EncoderASR``: waveforms → CTC log-posteriors, as cald-transcribe.

    Its transfer hook loads :meth:`Transcriber.from_pretrained` of the folder that holds
    the weights file it is given (the folder's other files collected beside it by
    :class:`FolderPretrainer`); the model becomes this module's ``model``, so ``.to()``,
    ``eval()`` and SpeechBrain's freezing act on it.

    Arguments
    ---------
    mode : str
        ``"auto"`` (as cald-transcribe), ``"one-pass"``, ``"windowed"`` or ``"plain"``.
    batch_size : int
        Utterances per padded batch (as :meth:`Transcriber.transcribe_batch`).
    **options
        Passed to :class:`Transcriber` (``window_s``, ``overlap_s``, ``precision``, ...).

    Notes
    -----
    Frames past an utterance's own end hold the blank with probability one, and so do
    all frames of digital silence (cald-transcribe's empty transcript). SpeechBrain's
    decoders take ``round(wav_lens * T)`` frames of each utterance; where that rounding
    would cut an utterance's last frame, one such blank frame is appended to the batch.

    Example
    -------
    >>> enc = CTCEncoder()
    >>> enc(torch.zeros(1, 16000), torch.ones(1))
    Traceback (most recent call last):
      ...
    cald_speech.errors.ConfigError: the CTC encoder is not loaded; ...
    """

    def __init__(self, mode="auto", batch_size=8, **options):
        super().__init__()
        self.mode = mode
        self.batch_size = max(1, int(batch_size))
        self.options = dict(options)
        self.model = None
        self.transcriber = None

    @mark_as_transfer
    def load(self, path):
        """Transfer hook: the packaged model of the folder holding ``path``."""
        transcriber = Transcriber.from_pretrained(Path(path).parent, **self.options)
        self.model = transcriber.model
        self.transcriber = transcriber

    def _runtime(self):
        if self.transcriber is None:
            raise ConfigError("the CTC encoder is not loaded; load the model with "
                              "EncoderASR.from_hparams(source=<model folder>, savedir=...)")
        return _sync_device(self.transcriber, self)

    def forward(self, wavs, wav_lens=None):
        """(B, T) waveforms at the model's rate, (B,) relative lengths → (B, T', V)."""
        tr = self._runtime()
        utts = _utterances(wavs, wav_lens)
        if len(utts) == 1:
            lps = [self._alone(tr, utts[0])]
        else:
            lps = self._batch(tr, utts)
        vocab = len(tr.tokenizer)
        device = torch.as_tensor(wavs).device
        lens = (torch.ones(len(utts)) if wav_lens is None else
                torch.as_tensor(wav_lens).to(device))
        frames = [lp.shape[0] for lp in lps]
        total = max(frames, default=0)
        while any(int(torch.round(r * total)) < t for r, t in zip(lens, frames)):
            total += 1  # rounding of relative lengths must not cut an utterance
        out = torch.full((len(lps), total, vocab), PAD_LOG_PROB)
        out[:, :, tr.tokenizer.blank_id] = 0.0
        for i, lp in enumerate(lps):
            out[i, :lp.shape[0]] = lp
        return out.to(device)

    def _blank(self, tr):
        return torch.zeros(0, len(tr.tokenizer))

    def _alone(self, tr, wav):
        """One utterance: :meth:`Transcriber.transcribe_waveform`'s path."""
        n = wav.numel()
        if n == 0 or float(wav.abs().max()) < SILENCE_PEAK:
            return self._blank(tr)
        progress = None if n / tr.rate >= PROGRESS_AFTER_S else False
        return tr.log_probs(wav, mode=self.mode, progress=progress)

    def _batch(self, tr, utts):
        """Several: :meth:`Transcriber.transcribe_batch`'s path (short ones padded)."""
        lps = [None] * len(utts)
        pending = []
        for i, wav in enumerate(utts):
            n = wav.numel()
            resolved = tr._resolve(self.mode, n) if n else "plain"
            silent = n == 0 or float(wav.abs().max()) < SILENCE_PEAK
            if n <= tr.window_s * tr.rate and not silent and n >= tr.receptive_field \
                    and resolved in ("plain", "one-pass"):
                pending.append((i, wav, None, resolved))
            else:
                lps[i] = self._alone(tr, wav)
        for k in range(0, len(pending), self.batch_size):
            chunk = pending[k:k + self.batch_size]
            for (i, _, _, _), lp in zip(chunk, tr._batch_log_probs(chunk)):
                lps[i] = lp
        return lps


@register_checkpoint_hooks
class IntentModule(torch.nn.Module):
    """An intent model folder as a module: its transfer hook loads a :class:`Classifier`.

    The model becomes this module's ``model`` (moved and frozen with it); the
    classifier is ``classifier``.

    Example
    -------
    >>> IntentModule().classifier is None
    True
    """

    def __init__(self):
        super().__init__()
        self.model = None
        self.classifier = None

    @mark_as_transfer
    def load(self, path):
        """Transfer hook: the intent model of the folder holding ``path``."""
        classifier = Classifier.from_pretrained(Path(path).parent)
        self.model = classifier.model
        self.classifier = classifier

    def runtime(self):
        """The loaded :class:`Classifier`, on this module's device."""
        if self.classifier is None:
            raise ConfigError("the intent model is not loaded; load it with foreign_class("
                              "source=<model folder>, pymodule_file='custom.py', "
                              "classname='CaldIntentClassifier', savedir=...)")
        return _sync_device(self.classifier, self)

    def forward(self, wavs, wav_lens=None):
        """(B, T) waveforms at 16 kHz → list of label dicts (see :class:`Classifier`)."""
        return self.runtime()._classify(_utterances(wavs, wav_lens))


class CaldIntentClassifier(Pretrained):
    """Spoken intent classification with a packaged intent model, as a SpeechBrain interface.

    Load it with ``foreign_class(source=folder, pymodule_file="custom.py",
    classname="CaldIntentClassifier", savedir=...)`` (the folder's ``custom.py`` imports
    this class) or ``CaldIntentClassifier.from_hparams(source=folder, savedir=...)``.
    Results are those of :class:`~cald_speech.inference.Classifier`: dicts with
    ``intent``, ``scenario``, ``action`` and their ``confidence``.

    Example
    -------
    >>> import tempfile
    >>> from cald_speech.student import convert, package_model
    >>> from cald_speech.tasks.intent.labels import LabelMaps
    >>> from cald_speech.tasks.intent.model import IntentModel
    >>> from cald_speech.testing import tiny_teacher
    >>> labels = LabelMaps({"alarm_set": ("alarm", "set"), "play_music": ("play", "music")})
    >>> folder = package_model(IntentModel.new(tiny_teacher(), labels), tempfile.mkdtemp())
    >>> slu = CaldIntentClassifier.from_hparams(source=folder, savedir=tempfile.mkdtemp())
    >>> [out["scenario"] in ("alarm", "play") for out in
    ...  slu.classify_batch(torch.randn(2, 8000), torch.tensor([1.0, 0.5]))]
    [True, True]
    """

    MODULES_NEEDED = ["classifier"]

    def classify_file(self, path):
        """Labels of one audio file (any format, rate and channel count)."""
        return self.mods.classifier.runtime().classify_file(os.fspath(path))

    def classify_files(self, paths, batch_size=8, errors="raise"):
        """Labels of several files, in padded batches (:meth:`Classifier.classify_batch`)."""
        return self.mods.classifier.runtime().classify_batch(
            [os.fspath(p) for p in paths], batch_size=batch_size, errors=errors)

    def classify_batch(self, wavs, wav_lens=None):
        """Labels of a padded (B, T) batch at 16 kHz with relative lengths ``wav_lens``."""
        return self.mods.classifier(wavs, wav_lens)

    def forward(self, wavs, wav_lens=None):
        """Same as :meth:`classify_batch`."""
        return self.classify_batch(wavs, wav_lens)
