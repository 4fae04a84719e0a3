"""The compiled beam-search engine of :class:`~cald_speech.decoding.BeamDecoder`.

torchaudio's CTC decoder (:func:`torchaudio.models.decoder.ctc_decoder`) runs
flashlight-text's C++ beam search (the ``flashlight-text`` wheel of the ``lm`` extra).
With an n-gram LM it decodes against a lexicon — the LM's own words, each spelled in the
model's units — so every output word is a word of the LM (the decoding of wav2letter,
flashlight and torchaudio's LibriSpeech examples); without an LM it searches
lexicon-free over the units. Scores: ``lm_weight`` x the LM's log10 probability plus
``word_bonus`` per word (flashlight's ``lm_weight`` / ``word_score``; their scale is not
SpeechBrain's, so each engine has its own defaults and search grid).

It is an order of magnitude faster than the pure-Python prefix beam search: decoding
adds a few percent to a one-pass transcription (``cald-bench decoding``).

Example
-------
>>> import torch
>>> from cald_speech.data.tokenizer import CharTokenizer
>>> tok = CharTokenizer()
>>> path = [0, 21, 21, 0, 16, 1, 1, 24, 16, 0]             # T O | W O
>>> probs = torch.nn.functional.one_hot(torch.tensor(path), 29) * 0.88 + 0.003
>>> search = FlashlightSearch(tok, beam_size=4)
>>> search(probs.log())
[('TO', 1, 4), ('WO', 7, 8)]
"""

import os
import tempfile
from pathlib import Path

from cald_speech.errors import ConfigError, DataError

#: Defaults of this engine (flashlight's scale: LM log10 probabilities).
LM_WEIGHT = 1.5
WORD_BONUS = -1.0
#: Units tried per frame (the most probable ones): on the starting model's dev split,
#: 8 of 29 search 10 minutes of posteriors 1.7x faster than all 29 for +0.2 WER points.
BEAM_SIZE_TOKEN = 8
#: The LM weight x word bonus grid ``--tune-lm`` searches for this engine.
LM_WEIGHTS = (0.5, 1.0, 1.5, 2.0, 3.0)
WORD_BONUSES = (-2.0, -1.0, 0.0, 1.0)

_BLANK, _SEP = "<cald-blank>", "|"


def available():
    """True when the ``flashlight-text`` module (the compiled search) is installed."""
    try:
        import flashlight.lib.text.decoder  # noqa: F401
    except ImportError:
        return False
    return True


def lm_words(path):
    """The words of an LM: an ARPA file's unigrams, or the ``.words.txt`` list that
    ``cald-lm build`` writes beside a KenLM binary."""
    from cald_speech.decoding import _arpa_unigrams, binary_lm_words, is_binary_lm

    path = Path(path)
    if not is_binary_lm(path):
        return _arpa_unigrams(path, limit=None)
    words = binary_lm_words(path)
    if words is None:
        name = path.with_suffix(".words.txt").name
        raise DataError(path, f"is a KenLM binary without its word list ({name}), "
                        "which the lexicon of the compiled beam search is made of",
                        f"keep {name} beside it (cald-lm build writes it), give the "
                        "ARPA file, or use --beam-engine speechbrain")
    return words


class FlashlightSearch:
    """Best word sequence of (T, V) CTC log posteriors by torchaudio's compiled decoder.

    Arguments
    ---------
    tokenizer : CharTokenizer or HubCTCTokenizer
        The model's units (words separated by the word separator / delimiter).
    beam_size : int
        Hypotheses kept per frame.
    lm : str, optional
        ARPA or KenLM binary word n-gram model; its words form the lexicon.
    lm_weight, word_bonus : float
        LM weight and per-word score.
    beam_size_token : int, optional
        Units tried per frame, the most probable first (default
        :data:`BEAM_SIZE_TOKEN`; ``None``: all).
    beam_threshold : float
        Hypotheses this far below the best are dropped.
    """

    def __init__(self, tokenizer, beam_size, lm=None, lm_weight=LM_WEIGHT,
                 word_bonus=WORD_BONUS, beam_size_token=BEAM_SIZE_TOKEN, beam_threshold=25.0):
        from cald_speech.decoding import _tokenizer_kind, beam_vocabulary

        if not available():
            raise ConfigError("the compiled beam search needs flashlight-text; fix: pip "
                              "install -e '.[lm]', or use --beam-engine speechbrain")
        if _tokenizer_kind(tokenizer) == "sentencepiece":
            raise ConfigError("the compiled beam search decodes character vocabularies; "
                              "fix: --beam-engine speechbrain for a SentencePiece model")
        vocab, self.never = beam_vocabulary(tokenizer)
        self.blank = tokenizer.blank_id
        self.tokens = [_BLANK if i == self.blank else _SEP if v == " " else v
                       for i, v in enumerate(vocab)]
        self.sep = self.tokens.index(_SEP)
        if any(len(v) != 1 for i, v in enumerate(self.tokens)
               if i not in self.never and v != _BLANK):
            raise ConfigError("the compiled beam search spells words in single characters, "
                              "and this vocabulary has longer units; fix: --beam-engine "
                              "speechbrain")
        self.lm = None if lm is None else str(lm)
        if beam_size_token is not None:
            beam_size_token = min(int(beam_size_token), len(self.tokens))
        self.options = {"beam_size": int(beam_size), "beam_size_token": beam_size_token,
                        "beam_threshold": float(beam_threshold)}
        self.lexicon = None
        if self.lm is not None:
            spell = {v for i, v in enumerate(self.tokens) if i not in self.never
                     and v not in (_BLANK, _SEP)}
            self.lexicon = [w for w in lm_words(self.lm) if w and all(c in spell for c in w)]
            if not self.lexicon:
                raise DataError(self.lm, "has no word the model can spell",
                                "build it for this model: cald-lm build TEXT --model MODEL")
        self.with_weights(lm_weight, word_bonus, _into=self)

    def with_weights(self, lm_weight, word_bonus, _into=None):
        """The same search with another LM weight and word bonus."""
        import copy

        from torchaudio.models.decoder import ctc_decoder

        other = _into or copy.copy(self)
        other.lm_weight, other.word_bonus = float(lm_weight), float(word_bonus)
        lexicon_file = None
        try:
            if self.lexicon is not None:
                fd, lexicon_file = tempfile.mkstemp(suffix=".lexicon.txt")
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    for w in self.lexicon:
                        f.write(f"{w}\t{' '.join(w)} {_SEP}\n")
            from cald_speech.decoding import _quiet_stderr

            with _quiet_stderr() as said:   # KenLM's loading progress bar
                try:
                    other._decoder = ctc_decoder(
                        lexicon=lexicon_file, tokens=self.tokens, lm=self.lm,
                        lm_weight=other.lm_weight, word_score=other.word_bonus,
                        sil_score=0.0, log_add=True, blank_token=_BLANK, sil_token=_SEP,
                        unk_word="<unk>", **self.options)
                except (OSError, RuntimeError, ValueError) as exc:
                    detail = " ".join(str(exc).split()) or " ".join(said.text().split())
                    raise DataError(self.lm, f"cannot be read by KenLM ({detail[-200:]})",
                                    "give a complete ARPA or KenLM binary file; build it "
                                    "again with cald-lm build") from None
        finally:
            if lexicon_file:
                os.unlink(lexicon_file)
        return other

    def __call__(self, log_probs):
        """``[(word, first frame, last frame)]`` of the best hypothesis: each word's
        first unit's frame and the frame where its last unit starts."""
        import torch

        lp = log_probs.detach().float().cpu()
        if self.never:
            lp = lp.clone()
            lp[:, self.never] = -1e9
        hyp = self._decoder(lp[None].contiguous())[0][0]
        last = lp.shape[0] - 1
        words, current = [], None
        # flashlight's frame indices count a leading silence frame: frame = step - 1
        for tok, step in zip(hyp.tokens.tolist(), torch.as_tensor(hyp.timesteps).tolist()):
            frame = min(max(int(step) - 1, 0), last)
            if tok == self.sep or tok == self.blank:
                if current:
                    words.append(tuple(current))
                current = None
            elif current is None:
                current = [self.tokens[tok], frame, frame]
            else:
                current[0] += self.tokens[tok]
                current[2] = frame
        if current:
            words.append(tuple(current))
        return words
