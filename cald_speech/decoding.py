"""CTC beam search with optional n-gram language-model fusion, and word timings for it.

Greedy decoding (the argmax path, :func:`~cald_speech.inference.align.align_words`) stays
the default. :class:`BeamDecoder` runs SpeechBrain's prefix beam search
(:class:`speechbrain.decoders.ctc.CTCPrefixBeamSearcher`, adapted from pyctcdecode) over
the frame log-posteriors of a whole input — one-pass and windowed transcription give one
posterior sequence, decoded once — with shallow fusion of a KenLM model (ARPA or binary,
through the ``kenlm`` module of the ``lm`` extra): each word's score adds
``lm_weight`` x its LM log-probability and ``word_bonus`` per word.

Works with every tokenizer the project reads: characters (the word separator becomes the
space), SentencePiece (words start at ``▁``) and hub CTC vocabularies (the word delimiter
becomes the space). Special units (``<s>``, ``</s>``, ``<unk>``) are never emitted by the
beam search. Word timings: the beam's words come with their frame spans; each word's
units are force-aligned to the posteriors inside its span
(:func:`torchaudio.functional.forced_align`), which gives its start, end and
confidence (the mean posterior of its units on the frames aligned to them — the same
definition as for greedy words).

Example
-------
>>> import torch
>>> from cald_speech.data.tokenizer import CharTokenizer
>>> tok = CharTokenizer()
>>> path = [0, 21, 21, 0, 16, 1, 1, 24, 16, 0]             # T O | W O
>>> probs = torch.nn.functional.one_hot(torch.tensor(path), 29) * 0.88 + 0.003
>>> probs[:, 0] += 0.02                                      # blank beats other units
>>> text, words = BeamDecoder(tok, beam_size=4).decode(probs.log(), frame_shift=0.02)
>>> text, [(w.word, w.start, w.end) for w in words]
('TO WO', [('TO', 0.02, 0.1), ('WO', 0.14, 0.18)])
"""

import copy
import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from cald_speech import decoding_flashlight as fl
from cald_speech.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

@dataclass
class Word:
    """A word of a transcript: text, start and end in seconds, confidence in [0, 1]."""

    word: str
    start: float
    end: float
    confidence: float

    def to_dict(self):
        """The JSON form ``{"word", "start", "end", "confidence"}`` (rounded)."""
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3),
                "confidence": round(self.confidence, 4)}


#: Defaults of the beam search (SpeechBrain's prefix beam search; weights as pyctcdecode's).
DEFAULT_BEAM_SIZE = 16
DEFAULT_LM_WEIGHT = 0.5
DEFAULT_WORD_BONUS = 1.5
#: Blank posterior above which a run of frames is searched as one frame.
DEFAULT_BLANK_SKIP = 0.999
#: Beam-search engines: "flashlight" (compiled, torchaudio's CTC decoder) where it is
#: installed and the vocabulary is made of characters, else "speechbrain".
ENGINES = ("auto", "flashlight", "speechbrain")
#: Share of an ARPA model's words that must be spellable with the model's units.
MIN_LM_COVERAGE = 0.5


def check_beam_options(beam_size=None, lm=None, lm_weight=None, word_bonus=None,
                       engine="auto"):
    """Checks decoding options; returns ``beam_size`` as an int or ``None`` (greedy).

    Example
    -------
    >>> check_beam_options(), check_beam_options(8)
    (None, 8)
    >>> check_beam_options(None, lm="lm.arpa")
    Traceback (most recent call last):
      ...
    cald_speech.errors.ConfigError: an LM (lm.arpa) is used by the beam search only; ...
    """
    if beam_size is None:
        if lm is not None:
            raise ConfigError(f"an LM ({lm}) is used by the beam search only; fix: give a "
                              f"beam size too (e.g. --beam-size {DEFAULT_BEAM_SIZE})")
        return None
    if isinstance(beam_size, bool) or int(beam_size) != beam_size or int(beam_size) < 1:
        raise ConfigError(f"beam size must be a positive integer, got {beam_size!r}; fix: "
                          f"--beam-size {DEFAULT_BEAM_SIZE} (or leave it out for greedy "
                          "decoding)")
    if engine not in ENGINES:
        raise ConfigError(f"beam engine {engine!r}: use one of {', '.join(ENGINES)}")
    for name, value in (("lm weight", lm_weight), ("word bonus", word_bonus)):
        try:
            None if value is None else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    return int(beam_size)


def add_decoding_options(parser):
    """Adds ``--beam-size``, ``--lm``, ``--lm-weight``, ``--word-bonus`` to a parser.

    Example
    -------
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_decoding_options(p)
    >>> vars(p.parse_args(["--beam-size", "8"]))["beam_size"]
    8
    """
    g = parser.add_argument_group("decoding (default: greedy)")
    g.add_argument("--beam-size", type=int, default=None, metavar="N",
                   help=f"CTC prefix beam search of width N (e.g. {DEFAULT_BEAM_SIZE}); "
                        "default: greedy decoding")
    g.add_argument("--lm", default=None, metavar="PATH",
                   help="KenLM n-gram model (ARPA or binary) fused into the beam search "
                        "(needs --beam-size; build one with cald-lm build)")
    g.add_argument("--lm-weight", type=float, default=None, metavar="A",
                   help="weight of the LM log-probability (default: the engine's, "
                        f"{DEFAULT_LM_WEIGHT:g} speechbrain, {fl.LM_WEIGHT:g} flashlight)")
    g.add_argument("--word-bonus", type=float, default=None, metavar="B",
                   help="score added per word (default: the engine's, "
                        f"{DEFAULT_WORD_BONUS:g} speechbrain, {fl.WORD_BONUS:g} flashlight)")
    g.add_argument("--beam-engine", default="auto", choices=ENGINES,
                   help="flashlight: torchaudio's compiled CTC decoder (with an LM, over a "
                        "lexicon of the LM's words); speechbrain: SpeechBrain's prefix beam "
                        "search (any vocabulary, open vocabulary with an LM); auto: "
                        "flashlight for character vocabularies where it is installed")


def decoding_kwargs(args):
    """The :class:`~cald_speech.inference.Transcriber` options of parsed arguments,
    checked (a :class:`~cald_speech.errors.ConfigError` for a bad combination)."""
    check_beam_options(args.beam_size, args.lm, args.lm_weight, args.word_bonus,
                       args.beam_engine)
    return {"beam_size": args.beam_size, "lm": args.lm, "lm_weight": args.lm_weight,
            "word_bonus": args.word_bonus, "beam_engine": args.beam_engine}


def _tokenizer_kind(tokenizer):
    from cald_speech.data.hub_tokenizer import HubCTCTokenizer
    from cald_speech.data.tokenizer import CharTokenizer, SentencePieceTokenizer

    for cls, kind in ((CharTokenizer, "char"), (HubCTCTokenizer, "hub"),
                      (SentencePieceTokenizer, "sentencepiece")):
        if isinstance(tokenizer, cls):
            return kind
    raise ConfigError(f"no beam search for a {type(tokenizer).__name__}")


def beam_vocabulary(tokenizer):
    """``(units as text, ids never emitted)`` for the beam search.

    The word separator / delimiter becomes ``" "``; SentencePiece pieces stay pieces
    (``▁`` starts a word); blank and special units are never emitted.

    Example
    -------
    >>> from cald_speech.data.tokenizer import CharTokenizer
    >>> vocab, never = beam_vocabulary(CharTokenizer(unk=True))
    >>> vocab[:4], vocab[-1], never
    (['', ' ', 'A', 'B'], '<unk>', [29])
    """
    kind = _tokenizer_kind(tokenizer)
    if kind == "sentencepiece":
        vocab = list(tokenizer.pieces)
        never = [i for i in (tokenizer.unk_id,) if i is not None and i > 0]
    elif kind == "char":
        vocab = list(tokenizer.symbols)
        vocab[tokenizer.word_sep_id] = " "
        never = [] if tokenizer.unk_id is None else [tokenizer.unk_id]
    else:
        vocab = list(tokenizer.symbols)
        if tokenizer.word_sep_id is None:
            raise DataError(tokenizer.vocab_file, "has no word delimiter, so a beam search "
                            "cannot tell words apart", "set word_delimiter_token in "
                            "tokenizer_config.json")
        vocab[tokenizer.word_sep_id] = " "
        never = sorted(i for i in tokenizer.hf.all_special_ids
                       if i not in (tokenizer.blank_id, tokenizer.word_sep_id))
    vocab[tokenizer.blank_id] = ""
    return vocab, never


def _arpa_unigrams(path, limit=20000):
    """Up to ``limit`` words (``None``: all) of an ARPA file's unigram section (no
    special tokens)."""
    words = []
    with open(path, encoding="utf-8", errors="replace") as f:
        section = None
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                section = line
                if section.startswith("\\2-grams") or section == "\\end\\":
                    break
                continue
            if section == "\\1-grams:" and line:
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1] not in ("<s>", "</s>", "<unk>"):
                    words.append(parts[1])
                    if limit is not None and len(words) >= limit:
                        break
    return words


def check_lm_file(path, tokenizer, engine="speechbrain"):
    """Checks an LM file before the beam search loads it: present, readable by KenLM,
    and — for ARPA — made of words the model can spell.

    Raises
    ------
    DataError
        Missing, empty, truncated or foreign file; an LM of another alphabet (e.g. lower
        case words for a model of upper-case letters).
    ConfigError
        The ``kenlm`` module is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "language model file not found",
                        "give an ARPA or KenLM binary file (build one with cald-lm build)")
    if path.stat().st_size == 0:
        raise DataError(path, "is empty", "build the LM again (cald-lm build)")
    try:
        if engine == "speechbrain":
            import kenlm  # noqa: F401
            import pygtrie  # noqa: F401  (SpeechBrain's KenLM scorer needs it)
    except ImportError:
        raise ConfigError("LM fusion needs the kenlm and pygtrie modules; fix: pip install "
                          "-e '.[lm]' (kenlm compiles from source: see the README)") from None
    if is_binary_lm(path):
        return
    words = _arpa_unigrams(path)
    vocab, never = beam_vocabulary(tokenizer)
    units = {v for i, v in enumerate(vocab) if v.strip() and i not in never}
    if _tokenizer_kind(tokenizer) == "sentencepiece":
        units = {ch for v in units for ch in v.replace("\u2581", "")}
    spellable = [w for w in words if all(ch in units for ch in w)]
    if words and len(spellable) < MIN_LM_COVERAGE * len(words):
        sample = ", ".join(repr(w) for w in words[:3])
        raise DataError(path, f"only {len(spellable)} of its first {len(words)} words "
                        f"({sample}, ...) can be spelled with the model's units "
                        f"({''.join(sorted(units))[:60]}): an LM of another alphabet or case",
                        "build it for this model: cald-lm build TEXT --model MODEL_DIR "
                        f"--out {path.name}")


class _quiet_stderr:
    """Sends the process's stderr (C++ libraries write there) to a file inside the block;
    :meth:`text` is what was written."""

    def __enter__(self):
        import tempfile

        self._file = tempfile.TemporaryFile(mode="w+b")
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        return False

    def text(self):
        self._file.seek(0)
        return self._file.read().decode("utf-8", "replace")


def resolve_engine(engine, tokenizer):
    """The beam-search engine ``"auto"`` stands for with ``tokenizer``.

    Example
    -------
    >>> from cald_speech.data.tokenizer import CharTokenizer
    >>> resolve_engine("speechbrain", CharTokenizer())
    'speechbrain'
    """
    if engine not in ENGINES:
        raise ConfigError(f"beam engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    chars = _tokenizer_kind(tokenizer) != "sentencepiece"
    return "flashlight" if chars and fl.available() else "speechbrain"


def binary_lm_words(path):
    """The word list ``cald-lm build`` writes beside a KenLM binary (``LM.words.txt``),
    or ``None`` where there is none."""
    words = Path(path).with_suffix(".words.txt")
    return words.read_text(encoding="utf-8").split() if words.is_file() else None


def is_binary_lm(path):
    """True for a KenLM binary file (``build_binary`` output), by its magic bytes."""
    with open(path, "rb") as f:
        return f.read(4) == b"mmap"


class BeamDecoder:
    """CTC prefix beam search, optionally fused with a KenLM n-gram model.

    Arguments
    ---------
    tokenizer : CharTokenizer, SentencePieceTokenizer or HubCTCTokenizer
        The model's tokenizer (blank = 0).
    beam_size : int
        Hypotheses kept per frame.
    lm : str or os.PathLike, optional
        An ARPA or KenLM binary file of words in the model's alphabet.
    lm_weight : float
        Weight of the LM log-probability (``alpha``).
    word_bonus : float
        Score added per word (``beta``), against the LM's preference for short outputs.
    beam_prune_logp, token_prune_min_logp : float
        SpeechBrain's pruning thresholds (beams this far below the best, units below
        this log-probability on a frame).
    blank_skip : float or None
        Blank posterior above which a run of frames is searched as one (see
        :meth:`best`); ``None``: every frame.
    engine : str
        ``"flashlight"`` (:mod:`cald_speech.decoding_flashlight`: compiled; with an LM,
        words from the LM's vocabulary only), ``"speechbrain"`` (pure Python; any
        vocabulary; with an LM, open vocabulary) or ``"auto"`` (flashlight for character
        vocabularies where it is installed). ``lm_weight`` / ``word_bonus`` of ``None``
        take the engine's defaults.
    """

    def __init__(self, tokenizer, beam_size=DEFAULT_BEAM_SIZE, lm=None,
                 lm_weight=None, word_bonus=None,
                 beam_prune_logp=-10.0, token_prune_min_logp=-5.0,
                 blank_skip=DEFAULT_BLANK_SKIP, engine="auto"):
        self.beam_size = check_beam_options(beam_size, lm, lm_weight, word_bonus, engine)
        self.tokenizer = tokenizer
        self.kind = _tokenizer_kind(tokenizer)
        self.engine = resolve_engine(engine, tokenizer)
        flash = self.engine == "flashlight"
        if lm_weight is None:
            lm_weight = fl.LM_WEIGHT if flash else DEFAULT_LM_WEIGHT
        if word_bonus is None:
            word_bonus = fl.WORD_BONUS if flash else DEFAULT_WORD_BONUS
        if blank_skip is not None and not math.exp(token_prune_min_logp) > 1 - blank_skip:
            raise ConfigError(f"blank_skip={blank_skip} would drop frames whose units the "
                              f"search keeps (token_prune_min_logp={token_prune_min_logp}); "
                              "use a blank_skip closer to 1")
        self.blank_skip = blank_skip
        self.vocab, self.never = beam_vocabulary(tokenizer)
        import torch

        self._unit_index = {v: i for i, v in enumerate(self.vocab) if v}
        # units that spell something (not blank, a space or a bare ▁)
        self._spells = torch.tensor([bool(v.replace("\u2581", "").strip())
                                     for v in self.vocab])
        self.lm = None if lm is None else str(lm)
        self.lm_weight, self.word_bonus = float(lm_weight), float(word_bonus)
        if self.lm is not None:
            check_lm_file(self.lm, tokenizer, self.engine)
        self.searcher = self.search = None
        if flash:
            self.search = fl.FlashlightSearch(tokenizer, self.beam_size, self.lm,
                                              self.lm_weight, self.word_bonus)
            return
        from speechbrain.decoders.ctc import CTCPrefixBeamSearcher

        unigrams = None
        if self.lm is not None and is_binary_lm(self.lm):
            unigrams = binary_lm_words(self.lm)
        sb_logger = logging.getLogger("speechbrain.decoders.ctc")
        level = sb_logger.level
        sb_logger.setLevel(logging.ERROR)  # its "Found space_token" / arpa notes
        try:
            with _quiet_stderr() as said:  # KenLM's loading progress bar
                self.searcher = CTCPrefixBeamSearcher(
                    blank_index=tokenizer.blank_id, vocab_list=self.vocab, space_token=" ",
                    kenlm_model_path=self.lm, unigrams=unigrams, alpha=self.lm_weight,
                    beta=self.word_bonus, beam_size=self.beam_size,
                    beam_prune_logp=beam_prune_logp,
                    token_prune_min_logp=token_prune_min_logp)
        except (OSError, RuntimeError, ValueError) as exc:
            detail = " ".join(str(exc).split()) or " ".join(said.text().split())[-200:]
            raise DataError(self.lm, f"cannot be read by KenLM ({detail})",
                            "give a complete ARPA or KenLM binary file; build it again with "
                            "cald-lm build") from None
        finally:
            sb_logger.setLevel(level)

    def with_weights(self, lm_weight, word_bonus):
        """The same search with another LM weight and word bonus, sharing the loaded LM
        (a grid of weights reads the LM file once)."""
        other = copy.copy(self)
        other.lm_weight, other.word_bonus = float(lm_weight), float(word_bonus)
        if self.search is not None:
            other.search = self.search.with_weights(lm_weight, word_bonus)
            return other
        other.searcher = copy.copy(self.searcher)
        other.searcher.alpha, other.searcher.beta = other.lm_weight, other.word_bonus
        if self.searcher.lm is not None:
            other.searcher.lm = copy.copy(self.searcher.lm)
            other.searcher.lm.alpha, other.searcher.lm.beta = other.lm_weight, \
                other.word_bonus
        return other

    def __repr__(self):
        lm = f", lm={os.path.basename(self.lm)}, weight {self.lm_weight:g}, bonus " \
             f"{self.word_bonus:g}" if self.lm else ""
        return f"BeamDecoder({self.engine}, beam {self.beam_size}{lm})"

    def settings(self):
        """The options as a JSON-able dict (for reports)."""
        return {"decoder": "beam", "engine": self.engine, "beam_size": self.beam_size,
                "lm": self.lm,
                "lm_weight": self.lm_weight if self.lm else None,
                "word_bonus": self.word_bonus if self.lm else None}

    def best(self, log_probs):
        """``(best hypothesis, kept frame indices)`` of SpeechBrain's searcher for (T, V)
        log posteriors.

        Runs of frames whose blank posterior exceeds ``blank_skip`` are searched as one
        frame (the first of the run): such a frame can extend no hypothesis by a unit
        above the searcher's token pruning threshold, and one blank frame still
        separates repeated units. Most CTC frames are such blanks, so the search runs on
        a fraction of the sequence (``blank_skip=None``: every frame).
        """
        import torch  # (imported here: the module's options load without torch)

        lp = log_probs.detach().float().cpu()
        index = torch.arange(lp.shape[0])
        if self.blank_skip is not None and lp.shape[0] > 1:
            sure = lp[:, self.tokenizer.blank_id] > math.log(self.blank_skip)
            keep = ~sure
            keep[1:] |= sure[1:] & ~sure[:-1]
            keep[0] = True
            index = index[keep]
            lp = lp[keep]
        if self.never:
            lp = lp.clone()
            lp[:, self.never] = float("-inf")
        return self.searcher(lp[None])[0][0], index

    def decode(self, log_probs, frame_shift, duration=None, timestamps=True):
        """``(text, words)`` of (T, V) log posteriors, as
        :func:`~cald_speech.inference.align.align_words` gives them for greedy decoding.
        """
        if log_probs.shape[0] == 0:
            return "", []
        spans = self.spans(log_probs)
        text = " ".join(w for w, _, _ in spans)
        if not timestamps:
            return text, []
        words = []
        limit = float("inf") if duration is None else float(duration)
        best_ids = log_probs.argmax(-1)  # once: each word looks at its own frames only
        for word, start, end in spans:
            first, last, conf = self._align(log_probs, word, start, end, best_ids)
            words.append(Word(word, round(min(first * frame_shift, limit), 6),
                              round(min((last + 1) * frame_shift, limit), 6), conf))
        return text, words

    def spans(self, log_probs):
        """``[(word, first frame, frame where its last unit starts)]`` of the best
        hypothesis (either engine)."""
        if self.search is not None:
            return self.search(log_probs)
        hyp, index = self.best(log_probs)
        last_kept = len(index) - 1
        out = []
        for word, (start, end) in hyp.text_frames or []:
            word = word.strip()
            if word:
                out.append((word, int(index[min(int(start), last_kept)]),
                            int(index[min(int(end), last_kept)])))
        if not hyp.text_frames and hyp.text.strip():   # no frames: the text alone
            out = [(w, 0, int(index[-1])) for w in hyp.text.split()]
        return out

    def _word_ids(self, word):
        if self.kind == "sentencepiece":
            return self.tokenizer.encode(word)
        ids = []
        for ch in word:
            i = self._unit_index.get(ch)
            if i is None:
                return None
            ids.append(i)
        return ids

    def _align(self, log_probs, word, start, end, best_ids):
        """(first frame, last frame, confidence) of ``word`` in frames [start, end]
        (``best_ids``: the argmax unit of every frame)."""
        import torch
        from torchaudio.functional import forced_align

        ids = self._word_ids(word)
        if ids:  # the searcher ends a word where its last unit starts: extend it
            while end + 1 < log_probs.shape[0] and int(best_ids[end + 1]) == ids[-1]:
                end += 1
        lp = log_probs[start:end + 1].float()
        if ids:
            try:
                path, scores = forced_align(lp[None], torch.tensor([ids], dtype=torch.int32),
                                            blank=self.tokenizer.blank_id)
            except RuntimeError:
                path = None
            if path is not None:
                on = self._spells[path[0].long()].nonzero().flatten()
                if on.numel():
                    conf = float(scores[0, on].exp().mean())
                    return start + int(on[0]), start + int(on[-1]), conf
        best = lp.max(dim=-1).values.exp()  # no alignment: the span and its argmax mass
        return start, end, float(best.mean())


def lm_words_in_alphabet(text, tokenizer):
    """Normalised words of ``text`` for an LM of ``tokenizer``'s units (case applied,
    word separators and specials removed); words with other characters dropped.

    Example
    -------
    >>> from cald_speech.data.tokenizer import CharTokenizer
    >>> lm_words_in_alphabet("It's a café!", CharTokenizer())
    ["IT'S", 'A']
    """
    from cald_speech.data.tokenizer import apply_case

    vocab, never = beam_vocabulary(tokenizer)
    units = {v for i, v in enumerate(vocab) if v.strip() and i not in never}
    if _tokenizer_kind(tokenizer) == "sentencepiece":
        units = {ch for v in units for ch in v.replace("\u2581", "")}
    text = apply_case(str(text), getattr(tokenizer, "case", None))
    words = re.findall(r"\S+", text)
    out = []
    for w in words:
        w = w.strip(".,;:!?\"()[]{}")
        if w and all(ch in units for ch in w):
            out.append(w)
    return out
