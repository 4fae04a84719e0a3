"""The CTC vocabulary of a hub checkpoint (``vocab.json`` + ``tokenizer_config.json``).

Fine-tuned CTC checkpoints on the Hugging Face hub (``facebook/wav2vec2-base-960h``,
``facebook/hubert-large-ls960-ft``, WavLM CTC fine-tunes) ship their vocabulary as
transformers' ``Wav2Vec2CTCTokenizer`` files: ``vocab.json`` (token -> id; for the English
models 32 units: ``<pad>`` = 0 = the CTC blank, ``<s>``, ``</s>``, ``<unk>``, the word
delimiter ``|``, upper-case letters and ``'``), ``tokenizer_config.json`` (special tokens,
``word_delimiter_token``, ``do_lower_case``) and ``special_tokens_map.json``.
:class:`HubCTCTokenizer` wraps transformers' own tokenizer behind the project's
tokenizer interface (``encode``, ``decode``, ``decode_ctc``, ``save``, ``len``,
``blank_id`` = 0), so that transcripts are exactly those of
``Wav2Vec2CTCTokenizer.batch_decode`` on the argmax path — the reference users trust.

Transcripts given to :meth:`HubCTCTokenizer.encode` are put in the vocabulary's case
(its letters are all upper-case for the English models); characters that are not in it
become ``<unk>`` and are counted (:meth:`HubCTCTokenizer.unknown_characters`), never
dropped silently.

Example
-------
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> write_hub_vocabulary(folder)                      # the files wav2vec2-base-960h ships
['special_tokens_map.json', 'tokenizer_config.json', 'vocab.json']
>>> tok = HubCTCTokenizer.load(folder)
>>> len(tok), tok.blank_id, tok.word_sep_id, tok.case
(32, 0, 4, 'upper')
>>> ids = tok.encode("it's a cat")
>>> tok.decode(ids)
"IT'S A CAT"
>>> tok.decode_ctc([0, 10, 10, 0, 6, 4, 4, 0, 7])   # blank I I blank T | | blank A
'IT A'
"""

import json
import os
from collections import Counter
from pathlib import Path

from cald_speech.errors import ConfigError, DataError
from cald_speech.preprocessor import read_model_json

VOCAB_FILE = "vocab.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_FILE = "special_tokens_map.json"
#: The files of a hub CTC vocabulary (what :meth:`HubCTCTokenizer.save` writes).
HUB_TOKENIZER_FILES = (VOCAB_FILE, CONFIG_FILE, SPECIAL_FILE)
#: ``tokenizer_class`` values read as a character CTC vocabulary.
SUPPORTED_CLASSES = ("Wav2Vec2CTCTokenizer",)
#: The vocabulary of the English wav2vec2 / HuBERT CTC fine-tunes (ids in this order).
ENGLISH_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]


def has_hub_tokenizer(folder):
    """Whether ``folder`` holds a hub CTC vocabulary (``vocab.json``).

    Example
    -------
    >>> import tempfile
    >>> has_hub_tokenizer(tempfile.mkdtemp())
    False
    """
    return (Path(folder) / VOCAB_FILE).is_file()


class HubCTCTokenizer:
    """A hub checkpoint's CTC vocabulary, read and decoded by transformers' tokenizer.

    Arguments
    ---------
    hf_tokenizer : transformers.Wav2Vec2CTCTokenizer
        The tokenizer (its pad token is the CTC blank and must have id 0).
    source : str, optional
        Where it was read from (named in error messages).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp(); _ = write_hub_vocabulary(folder)
    >>> tok = HubCTCTokenizer.load(folder)
    >>> tok.encode("Ça va")          # 'Ç' is not a unit: <unk> (id 3), and counted
    [3, 7, 4, 25, 7]
    >>> tok.unknown
    Counter({'Ç': 1})
    """

    kind = "hub-ctc"

    def __init__(self, hf_tokenizer, source=None):
        self.hf = hf_tokenizer
        self.source = str(source) if source is not None else "<tokenizer>"
        #: The file that defines the units (named in error messages).
        self.vocab_file = vocab_path = os.path.join(self.source, VOCAB_FILE)
        if self.hf.pad_token_id is None:
            raise DataError(vocab_path, "the tokenizer has no pad token, which CTC models "
                            "use as their blank", f"set \"pad_token\" in {CONFIG_FILE}")
        if self.hf.pad_token_id != 0:
            raise DataError(
                vocab_path,
                f"the pad/blank token {self.hf.pad_token!r} has id {self.hf.pad_token_id}; "
                "cald-speech's CTC losses, decoders and alignment take the blank at id 0",
                "re-order vocab.json so that the pad token is id 0 and permute the rows of "
                "the model's lm_head (weight and bias) the same way",
            )
        self.blank_id = 0
        self.symbols = self.hf.convert_ids_to_tokens(list(range(len(self.hf))))
        delimiter = self.hf.word_delimiter_token
        self.word_sep = delimiter
        self.word_sep_id = self.hf.word_delimiter_token_id
        if self.word_sep_id is None or self.word_sep_id >= len(self.symbols) or \
                self.symbols[self.word_sep_id] != delimiter:
            raise DataError(vocab_path, f"the word delimiter {delimiter!r} is not in the "
                            "vocabulary", f"set \"word_delimiter_token\" in {CONFIG_FILE} to "
                            "the vocabulary's word separator")
        self.unk_id = self.hf.unk_token_id
        letters = [s for s in self.symbols
                   if len(s) == 1 and s.isalpha() and s.lower() != s.upper()]
        if letters and all(s.isupper() for s in letters):
            self.case = "upper"
        elif letters and all(s.islower() for s in letters):
            self.case = "lower"
        else:
            self.case = None
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self.unknown = Counter()

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, folder):
        """Reads ``vocab.json`` + ``tokenizer_config.json`` (+ special tokens) of a folder.

        Raises
        ------
        DataError
            A missing or malformed file, a tokenizer class other than
            ``Wav2Vec2CTCTokenizer``, a pad/blank token other than id 0.
        """
        from transformers import Wav2Vec2CTCTokenizer
        from transformers.utils import logging as hf_logging

        folder = Path(folder)
        if not (folder / VOCAB_FILE).is_file():
            raise DataError(folder, f"no {VOCAB_FILE} in the folder",
                            "copy the model's vocab.json and tokenizer_config.json")
        vocab = read_model_json(folder / VOCAB_FILE, "a vocabulary (token -> id)")
        bad = [k for k, v in vocab.items() if not isinstance(v, int) or isinstance(v, bool)]
        ids = sorted(v for v in vocab.values() if isinstance(v, int))
        if bad or ids != list(range(len(vocab))):
            what = f"non-integer ids for {bad[:3]!r}" if bad else "gaps or repeated ids"
            raise DataError(folder / VOCAB_FILE, f"is not a vocabulary of ids 0..N-1 ({what})",
                            "copy the vocab.json saved with the model")
        config = {}
        if (folder / CONFIG_FILE).is_file():
            config = read_model_json(folder / CONFIG_FILE, "a tokenizer configuration")
        delimiter = config.get("word_delimiter_token", "|")
        if delimiter is not None and delimiter not in vocab:
            raise DataError(folder / VOCAB_FILE, f"has no word delimiter {delimiter!r} (the "
                            f"word_delimiter_token of {CONFIG_FILE}), so words cannot be told "
                            "apart", f"set word_delimiter_token in {CONFIG_FILE} to the "
                            "vocabulary's word separator")
        tok_class = config.get("tokenizer_class") or "Wav2Vec2CTCTokenizer"
        if tok_class not in SUPPORTED_CLASSES:
            raise DataError(
                folder / CONFIG_FILE,
                f"names tokenizer_class {tok_class!r}, which cald-speech cannot use for CTC "
                f"(supported: {', '.join(SUPPORTED_CLASSES)})",
                "use a character CTC checkpoint, or fine-tune the encoder with the recipe's "
                "own tokenizer (recipes/LibriSpeech/ASR/hparams/finetune.yaml --tokenizer ...)",
            )
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            hf = Wav2Vec2CTCTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), repr(exc))
            raise DataError(folder / CONFIG_FILE, f"cannot be read as a CTC tokenizer ({first})",
                            "copy the tokenizer files saved with the model") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
        if len(hf) != len(vocab):
            raise DataError(folder / CONFIG_FILE,
                            f"adds {len(hf) - len(vocab)} token(s) to the {len(vocab)} of "
                            f"{VOCAB_FILE}; a CTC head has one output per vocabulary entry",
                            "remove added tokens from tokenizer_config.json / added_tokens.json")
        return cls(hf, source=folder)

    # ------------------------------------------------------------------ interface
    def __len__(self):
        return len(self.symbols)

    def __eq__(self, other):
        return (isinstance(other, HubCTCTokenizer) and self.symbols == other.symbols
                and self.word_sep_id == other.word_sep_id)

    def __repr__(self):
        return (f"HubCTCTokenizer({len(self)} units, delimiter {self.word_sep!r}, "
                f"case={self.case!r}, from {self.source})")

    def _in_case(self, text):
        text = " ".join(str(text).split())
        if self.case == "upper":
            return text.upper()
        if self.case == "lower":
            return text.lower()
        return text

    def unknown_characters(self, text):
        """Characters of ``text`` (in the vocabulary's case) that are not units.

        Example
        -------
        >>> import tempfile
        >>> folder = tempfile.mkdtemp(); _ = write_hub_vocabulary(folder)
        >>> HubCTCTokenizer.load(folder).unknown_characters("café au lait 2")
        Counter({'É': 1, '2': 1})
        """
        return Counter(ch for ch in self._in_case(text)
                       if not ch.isspace() and ch not in self._index)

    def encode(self, text):
        """Text -> ids: the vocabulary's case, words joined by the delimiter, unknown
        characters -> ``<unk>`` (counted in :attr:`unknown`)."""
        text = self._in_case(text)
        ids = []
        for w, word in enumerate(text.split(" ") if text else []):
            if w:
                ids.append(self.word_sep_id)
            for ch in word:
                i = self._index.get(ch)
                if i is None or i == self.blank_id:
                    if self.unk_id is None:
                        raise ConfigError(
                            f"character {ch!r} (U+{ord(ch):04X}) in {text!r} is not in the "
                            f"vocabulary of {self.source} and it has no unk token; "
                            "normalise the transcripts to its alphabet")
                    self.unknown[ch] += 1
                    i = self.unk_id
                ids.append(i)
        return ids

    def decode(self, ids):
        """Ids -> text without CTC collapsing (blanks dropped, delimiter -> space)."""
        from cald_speech.data.tokenizer import _as_id_list

        ids = _as_id_list(ids)
        n = len(self)
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"id {i} out of range for a vocabulary of {n} units")
        return self.hf.decode(ids, group_tokens=False)

    def decode_ctc(self, ids):
        """Greedy CTC decoding of frame ids, exactly as ``Wav2Vec2CTCTokenizer.decode``."""
        from cald_speech.data.tokenizer import _as_id_list

        return self.hf.decode(_as_id_list(ids))

    def save(self, path):
        """Writes ``vocab.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

        ``path`` is a folder (or a file inside it). Returns the ``vocab.json`` written.
        """
        folder = Path(path)
        if folder.suffix == ".json":
            folder = folder.parent
        folder.mkdir(parents=True, exist_ok=True)
        write_hub_vocabulary(folder, self.symbols, word_delimiter=self.word_sep,
                             unk=self.hf.unk_token, pad=self.hf.pad_token,
                             bos=self.hf.bos_token, eos=self.hf.eos_token,
                             do_lower_case=bool(getattr(self.hf, "do_lower_case", False)))
        return str(folder / VOCAB_FILE)


def write_hub_vocabulary(folder, symbols=None, word_delimiter="|", unk="<unk>", pad="<pad>",
                         bos="<s>", eos="</s>", do_lower_case=False):
    """Writes the tokenizer files of a hub CTC checkpoint, as the hub ships them.

    Arguments
    ---------
    folder : str or os.PathLike
        Where to write ``vocab.json``, ``tokenizer_config.json`` and
        ``special_tokens_map.json``.
    symbols : list of str, optional
        The units in id order (default: :data:`ENGLISH_VOCAB`, the 32 units of
        ``facebook/wav2vec2-base-960h``).
    word_delimiter, unk, pad, bos, eos : str or None
        The special tokens.
    do_lower_case : bool
        Written to ``tokenizer_config.json``.

    Returns
    -------
    list of str
        The files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(ENGLISH_VOCAB if symbols is None else symbols)
    special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk),
                                 ("pad_token", pad)) if v is not None}
    config = {**special, "do_lower_case": bool(do_lower_case),
              "word_delimiter_token": word_delimiter, "tokenizer_class": "Wav2Vec2CTCTokenizer"}
    files = {VOCAB_FILE: {s: i for i, s in enumerate(symbols)}, CONFIG_FILE: config,
             SPECIAL_FILE: special}
    for name, obj in files.items():
        tmp = folder / f".{name}.tmp"
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, folder / name)
    return sorted(files)
