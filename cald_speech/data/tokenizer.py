"""Tokenisers for CTC: a character vocabulary and a SentencePiece (unigram/BPE) model.

Both share one interface: index 0 is the CTC blank, ``encode(text) -> list[int]``,
``decode(ids) -> str``, ``decode_ctc(ids) -> str`` (greedy: collapse repeats, drop
blanks), ``save(path)``, ``len(tok)``; :func:`load_tokenizer` reads back either kind.

Example
-------
>>> tok = CharTokenizer()
>>> ids = tok.encode("IT'S A CAT")
>>> tok.decode(ids)
"IT'S A CAT"
>>> tok.decode_ctc([0, 3, 3, 0, 3, 1, 1, 0, 4])  # blank B B blank B | | blank C
'BB C'
"""

import csv
import io
import json
import os
import string

from cald_speech.errors import ConfigError, DataError

BLANK = "<blank>"
UNK = "<unk>"
#: The default character set: word separator, letters A-Z, apostrophe.
DEFAULT_CHARACTERS = ["|"] + list(string.ascii_uppercase) + ["'"]
TOKENIZER_FILE = "tokenizer.json"
CASES = ("upper", "lower", None)


def apply_case(text, case):
    """``text`` in a tokenizer's case (``"upper"``, ``"lower"``, or ``None``: as it is).

    Example
    -------
    >>> apply_case("It's", "upper"), apply_case("It's", None)
    ("IT'S", "It's")
    """
    if case == "upper":
        return text.upper()
    if case == "lower":
        return text.lower()
    return text


def _as_id_list(ids):
    """Accepts a list, tuple, numpy array or torch tensor of ints."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    ids = list(ids)
    if ids and isinstance(ids[0], list):
        raise ValueError("expected one sequence of ids, got a batch; decode each row")
    return [int(i) for i in ids]


def ctc_collapse(ids, blank_id=0):
    """Greedy CTC post-processing: merges repeated ids, then removes blanks.

    Example
    -------
    >>> ctc_collapse([0, 5, 5, 0, 5, 7, 7, 0])
    [5, 5, 7]
    """
    out = []
    prev = None
    for i in _as_id_list(ids):
        if i != prev and i != blank_id:
            out.append(i)
        prev = i
    return out


def _json_path(path):
    """``path`` itself if it names a .json file, else ``path/tokenizer.json``."""
    path = os.fspath(path)
    if path.endswith(".json"):
        return path
    return os.path.join(path, TOKENIZER_FILE)


def _write_json(path, obj):
    from cald_speech.data.manifest import write_json_atomic

    write_json_atomic(path, obj)


class CharTokenizer:
    """Character vocabulary for CTC: blank, word separator, characters (and ``<unk>``).

    Index 0 is the blank ``<blank>``; index 1 the word separator (``|`` by default);
    then the characters; ``<unk>`` comes last when ``unk=True``. Text is upper-cased
    (``case="upper"``) and runs of whitespace become one separator.

    Arguments
    ---------
    characters : list of str or None
        The symbols after the blank, word separator first; ``None`` gives
        :data:`DEFAULT_CHARACTERS` (``|``, ``A``-``Z``, ``'``).
    unk : bool
        Map unknown characters to ``<unk>`` instead of raising an error.
    case : str or None
        ``"upper"``, ``"lower"`` or ``None`` (keep the case).

    Example
    -------
    >>> tok = CharTokenizer()
    >>> len(tok), tok.blank_id, tok.word_sep_id
    (29, 0, 1)
    >>> tok.encode("a b")
    [2, 1, 3]
    >>> tok.encode("café")
    Traceback (most recent call last):
    ...
    cald_speech.errors.ConfigError: character 'É' (U+00C9) in 'CAFÉ' is not in the vocabulary...
    >>> CharTokenizer(unk=True).decode(CharTokenizer(unk=True).encode("café"))
    'CAF<unk>'
    >>> tok2 = CharTokenizer.from_texts(["hello world", "héllo"])
    >>> tok2.decode(tok2.encode("HÉLLO WORLD"))
    'HÉLLO WORLD'
    """

    kind = "char"

    def __init__(self, characters=None, unk=False, case="upper"):
        if case not in CASES:
            raise ConfigError(f"case={case!r} is not one of {CASES}")
        chars = list(DEFAULT_CHARACTERS if characters is None else characters)
        if not chars:
            raise ConfigError("a character vocabulary needs at least the word separator")
        if len(set(chars)) != len(chars):
            raise ConfigError(f"repeated symbols in the character vocabulary {chars}")
        bad = [c for c in chars if c in (BLANK, UNK) or not c or c.isspace()]
        if bad:
            raise ConfigError(f"symbols {bad} cannot be characters (blank/unk are added)")
        self.characters = chars
        self.unk = bool(unk)
        self.case = case
        self.symbols = [BLANK] + chars + ([UNK] if self.unk else [])
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self.blank_id = 0
        self.word_sep = chars[0]
        self.word_sep_id = 1
        self.unk_id = self._index[UNK] if self.unk else None

    @classmethod
    def from_texts(cls, texts, unk=False, case="upper", word_sep="|"):
        """Builds the vocabulary from transcripts: separator, then every character seen.

        Characters are ordered: letters A-Z first (when seen), then the rest sorted.
        """
        seen = set()
        for t in texts:
            seen.update(ch for ch in apply_case(str(t), case) if not ch.isspace())
        seen.discard(word_sep)
        if not seen:
            raise DataError("texts", "no characters found to build a vocabulary from",
                            "pass non-empty transcripts")
        letters = [c for c in string.ascii_uppercase + string.ascii_lowercase if c in seen]
        rest = sorted(seen - set(letters))
        return cls([word_sep] + letters + rest, unk=unk, case=case)

    @classmethod
    def from_csv(cls, csv_path, column="wrd", **kwargs):
        """Builds the vocabulary from one column of a CSV manifest."""
        return cls.from_texts(read_csv_column(csv_path, column), **kwargs)

    def __len__(self):
        return len(self.symbols)

    def __eq__(self, other):
        return (
            isinstance(other, CharTokenizer)
            and self.symbols == other.symbols
            and self.case == other.case
        )

    def __repr__(self):
        return f"CharTokenizer({len(self)} symbols, unk={self.unk}, case={self.case!r})"

    def encode(self, text):
        """Text → list of ids (whitespace runs → one word separator; no blanks)."""
        text = apply_case(str(text), self.case)
        ids = []
        words = text.split()
        for w, word in enumerate(words):
            if w:
                ids.append(self.word_sep_id)
            for ch in word:
                i = self._index.get(ch)
                if i is None or i == self.blank_id:
                    if self.unk:
                        i = self.unk_id
                    else:
                        raise ConfigError(
                            f"character {ch!r} (U+{ord(ch):04X}) in {text!r} is not in the "
                            f"vocabulary {''.join(self.characters)!r}; normalise the text, "
                            "build the tokenizer from these transcripts, or use unk=True"
                        )
                ids.append(i)
        return ids

    def decode(self, ids):
        """Ids → text; blanks are dropped, separators become single spaces."""
        out = []
        n = len(self.symbols)
        for i in _as_id_list(ids):
            if not 0 <= i < n:
                raise ValueError(f"id {i} out of range for a vocabulary of {n} symbols")
            if i == self.blank_id:
                continue
            out.append(" " if i == self.word_sep_id else self.symbols[i])
        return " ".join("".join(out).split())

    def decode_ctc(self, ids):
        """Greedy CTC decoding of frame-level ids (argmax path) → text."""
        return self.decode(ctc_collapse(ids, self.blank_id))

    def to_dict(self):
        """The JSON form written by :meth:`save`."""
        return {
            "kind": self.kind,
            "symbols": self.symbols,
            "characters": self.characters,
            "unk": self.unk,
            "case": self.case,
            "blank_id": self.blank_id,
        }

    def save(self, path):
        """Writes the vocabulary as JSON (``path`` ending in .json, or a folder).

        Returns
        -------
        str
            The JSON file written.
        """
        path = _json_path(path)
        _write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path):
        """Reads a vocabulary written by :meth:`save`."""
        d = _read_json(path)
        if d.get("kind") != cls.kind:
            raise DataError(path, f"holds a {d.get('kind')!r} tokenizer, not a character one",
                            "use load_tokenizer()")
        return cls(d["characters"], unk=d.get("unk", False), case=d.get("case", "upper"))


class SentencePieceTokenizer:
    """A SentencePiece unigram or BPE model whose id 0 is the CTC blank.

    The model is trained with the ``sentencepiece`` library with ``<blank>`` as its
    padding piece at id 0 and ``<unk>`` at id 1 (no BOS/EOS), so its ids are the CTC
    classes directly.

    Arguments
    ---------
    model_proto : bytes
        A serialised SentencePiece model (the content of a ``.model`` file).
    case : str or None
        Case applied before encoding (must match training).
    model_type : str
        Recorded for information (``"unigram"`` or ``"bpe"``).

    Example
    -------
    >>> texts = ["THE CAT SAT ON THE MAT", "A DOG SAT ON A LOG", "THE DOG AND THE CAT"] * 4
    >>> tok = SentencePieceTokenizer.train(texts, vocab_size=30, model_type="bpe")
    >>> tok.blank_id, tok.decode(tok.encode("the dog sat"))
    (0, 'THE DOG SAT')
    >>> ids = tok.encode("THE CAT")
    >>> tok.decode_ctc([0] + [ids[0], ids[0], 0] + ids[1:])
    'THE CAT'
    """

    kind = "sentencepiece"
    MODEL_TYPES = ("unigram", "bpe")

    def __init__(self, model_proto, case="upper", model_type="unigram"):
        import sentencepiece as spm

        if case not in CASES:
            raise ConfigError(f"case={case!r} is not one of {CASES}")
        self.model_proto = bytes(model_proto)
        self.case = case
        self.model_type = model_type
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        if self.sp.id_to_piece(0) != BLANK:
            raise ConfigError(
                f"SentencePiece model has {self.sp.id_to_piece(0)!r} at id 0, not {BLANK!r}; "
                "train it with SentencePieceTokenizer.train so that id 0 is the CTC blank"
            )
        self.blank_id = 0
        self.unk_id = self.sp.unk_id()

    @classmethod
    def train(cls, texts=None, vocab_size=256, model_type="unigram", csv_path=None,
              column="wrd", case="upper", character_coverage=1.0, seed=0):
        """Trains a model on a list of texts or on one column of a CSV manifest.

        Arguments
        ---------
        texts : iterable of str or None
            Training sentences.
        vocab_size : int
            Target number of pieces including ``<blank>`` and ``<unk>``; a soft limit
            (a small corpus may give fewer).
        model_type : str
            ``"unigram"`` or ``"bpe"``.
        csv_path, column : str
            Alternatively, read the sentences from this column of a CSV file.
        case : str or None
            Case applied to the sentences (and later to every encoded text).
        character_coverage : float
            Share of characters covered by the model (1.0 for small alphabets).
        seed : int
            Seed of the trainer's sampling (results are deterministic for a given input).
        """
        import sentencepiece as spm

        if model_type not in cls.MODEL_TYPES:
            raise ConfigError(f"model_type={model_type!r} is not one of {cls.MODEL_TYPES}")
        if case not in CASES:
            raise ConfigError(f"case={case!r} is not one of {CASES}")
        if texts is None:
            if csv_path is None:
                raise ConfigError("pass texts=[...] or csv_path= to train a SentencePiece model")
            texts = read_csv_column(csv_path, column)
        sentences = [" ".join(apply_case(str(t), case).split()) for t in texts]
        sentences = [s for s in sentences if s]
        if not sentences:
            raise DataError(csv_path or "texts", "no non-empty sentence to train on",
                            "pass transcripts")
        if int(vocab_size) < 4:
            raise ConfigError(f"vocab_size={vocab_size} is too small (at least 4)")
        model = io.BytesIO()
        spm.set_random_generator_seed(int(seed))
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=model,
                model_type=model_type,
                vocab_size=int(vocab_size),
                hard_vocab_limit=False,
                character_coverage=character_coverage,
                pad_id=0,
                pad_piece=BLANK,
                unk_id=1,
                unk_piece=UNK,
                bos_id=-1,
                eos_id=-1,
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as exc:
            raise ConfigError(f"SentencePiece training failed: {exc}") from None
        return cls(model.getvalue(), case=case, model_type=model_type)

    def __len__(self):
        return self.sp.get_piece_size()

    def __eq__(self, other):
        return (
            isinstance(other, SentencePieceTokenizer)
            and self.model_proto == other.model_proto
            and self.case == other.case
        )

    def __repr__(self):
        return f"SentencePieceTokenizer({self.model_type}, {len(self)} pieces, case={self.case!r})"

    @property
    def pieces(self):
        """All pieces, in id order."""
        return [self.sp.id_to_piece(i) for i in range(len(self))]

    def encode(self, text):
        """Text → list of piece ids (never the blank)."""
        return list(self.sp.encode(" ".join(apply_case(str(text), self.case).split())))

    def decode(self, ids):
        """Piece ids → text; blanks are dropped."""
        n = len(self)
        ids = _as_id_list(ids)
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"id {i} out of range for a vocabulary of {n} pieces")
        return self.sp.decode([i for i in ids if i != self.blank_id])

    def decode_ctc(self, ids):
        """Greedy CTC decoding of frame-level ids (argmax path) → text."""
        return self.decode(ctc_collapse(ids, self.blank_id))

    def save(self, path):
        """Writes ``<name>.json`` and the SentencePiece model ``<name>.model`` beside it.

        ``path`` is a .json file name or a folder (then ``tokenizer.json`` +
        ``tokenizer.model``). Returns the JSON file written.
        """
        path = _json_path(path)
        model_path = os.path.splitext(path)[0] + ".model"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = model_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(self.model_proto)
        os.replace(tmp, model_path)
        _write_json(path, {
            "kind": self.kind,
            "model": os.path.basename(model_path),
            "model_type": self.model_type,
            "case": self.case,
            "blank_id": self.blank_id,
            "size": len(self),
        })
        return path

    @classmethod
    def load(cls, path):
        """Reads a tokenizer written by :meth:`save`."""
        json_path = _json_path(path)
        d = _read_json(json_path)
        if d.get("kind") != cls.kind:
            raise DataError(json_path, f"holds a {d.get('kind')!r} tokenizer, not SentencePiece",
                            "use load_tokenizer()")
        model_path = os.path.join(os.path.dirname(os.path.abspath(json_path)), d["model"])
        if not os.path.isfile(model_path):
            raise DataError(model_path, "SentencePiece model file not found",
                            "keep the .model file beside its .json, or save the tokenizer again")
        with open(model_path, "rb") as f:
            proto = f.read()
        try:
            return cls(proto, case=d.get("case", "upper"), model_type=d.get("model_type", "?"))
        except (RuntimeError, OSError) as exc:
            raise DataError(model_path, f"not a SentencePiece model ({exc})",
                            "save the tokenizer again") from None


def read_csv_column(csv_path, column):
    """All values of one column of a CSV file (for building vocabularies)."""
    csv_path = os.fspath(csv_path)
    if not os.path.isfile(csv_path):
        raise DataError(csv_path, "CSV file not found", "run cald-prepare first")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if column not in (reader.fieldnames or []):
            raise DataError(csv_path, f"no column {column!r}; columns are {reader.fieldnames}",
                            "pass the transcript column, e.g. column='wrd'")
        return [row[column] for row in reader]


def _read_json(path):
    path = _json_path(path)
    if not os.path.isfile(path):
        raise DataError(
            path, "tokenizer file not found", "check the path, or save a tokenizer there"
        )
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except ValueError as exc:
        raise DataError(path, f"not valid JSON ({exc})", "save the tokenizer again") from None
    if not isinstance(d, dict) or "kind" not in d:
        raise DataError(path, "not a tokenizer file (no 'kind')", "save the tokenizer again")
    return d


def build_tokenizer(kind="char", texts=None, csv_path=None, column="wrd", vocab_size=256,
                    unk=False, case="upper", **kwargs):
    """Builds a tokenizer of the given kind.

    Arguments
    ---------
    kind : str
        ``"char"``, ``"unigram"``, ``"bpe"`` (SentencePiece), or ``"sentencepiece"``
        (unigram unless ``model_type=`` says otherwise).
    texts : iterable of str or None
        Transcripts to build from. For ``"char"``, ``None`` (and no CSV) gives the
        default vocabulary (blank, ``|``, A-Z, apostrophe).
    csv_path, column : str
        Read the transcripts from this column of a CSV manifest instead.
    vocab_size : int
        SentencePiece vocabulary size (soft limit).
    unk : bool
        Character tokenizer: map unknown characters to ``<unk>``.
    case : str or None
        Case applied to every text.
    **kwargs
        Passed on to :meth:`SentencePieceTokenizer.train`.

    Example
    -------
    >>> len(build_tokenizer("char"))
    29
    >>> build_tokenizer("bpe", texts=["A B C AB"] * 3, vocab_size=8).decode_ctc([0])
    ''
    """
    if kind == "char":
        if texts is None and csv_path is None:
            return CharTokenizer(unk=unk, case=case)
        if texts is None:
            texts = read_csv_column(csv_path, column)
        return CharTokenizer.from_texts(texts, unk=unk, case=case)
    if kind in ("unigram", "bpe", "sentencepiece"):
        model_type = kwargs.pop("model_type", "unigram" if kind == "sentencepiece" else kind)
        return SentencePieceTokenizer.train(
            texts, vocab_size=vocab_size, model_type=model_type, csv_path=csv_path,
            column=column, case=case, **kwargs,
        )
    raise ConfigError(
        f"tokenizer kind {kind!r} is unknown; use 'char', 'unigram', 'bpe' or 'sentencepiece'"
    )


def has_tokenizer(folder):
    """Whether a model folder holds a tokenizer :func:`load_tokenizer` reads.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> has_tokenizer(d), has_tokenizer(CharTokenizer().save(d) and d)
    (False, True)
    """
    from cald_speech.data.hub_tokenizer import has_hub_tokenizer

    folder = os.fspath(folder)
    return os.path.isfile(os.path.join(folder, TOKENIZER_FILE)) or has_hub_tokenizer(folder)


def _project_json(folder):
    """The folder's ``tokenizer.json`` when it is one of the project's (has ``kind``)."""
    path = os.path.join(folder, TOKENIZER_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except ValueError:
        return path  # reported by _read_json
    return path if isinstance(d, dict) and "kind" in d else None


def load_tokenizer(path):
    """Loads a tokenizer: the project's ``tokenizer.json`` or a hub CTC vocabulary.

    ``path`` is a .json file, or a model folder holding either the project's
    ``tokenizer.json`` (:class:`CharTokenizer`, :class:`SentencePieceTokenizer`) or the
    files of a hub CTC checkpoint (``vocab.json`` + ``tokenizer_config.json``, read as a
    :class:`~cald_speech.data.hub_tokenizer.HubCTCTokenizer`); the project's file wins
    when both are present.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> tok = CharTokenizer(unk=True)
    >>> load_tokenizer(tok.save(d)) == tok
    True
    >>> from cald_speech.data.hub_tokenizer import write_hub_vocabulary
    >>> hub = tempfile.mkdtemp(); _ = write_hub_vocabulary(hub)
    >>> len(load_tokenizer(hub))
    32
    """
    from cald_speech.data.hub_tokenizer import VOCAB_FILE, HubCTCTokenizer, has_hub_tokenizer

    path = os.fspath(path)
    if os.path.isdir(path):
        own = _project_json(path)
        if own is None:
            if has_hub_tokenizer(path):
                return HubCTCTokenizer.load(path)
            raise DataError(path, f"no tokenizer in the model folder ({TOKENIZER_FILE}, or "
                            f"{VOCAB_FILE} + tokenizer_config.json)",
                            "copy the model's tokenizer files into the folder, or package "
                            "it with cald_speech.student.package_model(model, folder, tokenizer)")
        path = own
    elif os.path.basename(path) == VOCAB_FILE:
        return HubCTCTokenizer.load(os.path.dirname(os.path.abspath(path)))
    d = _read_json(path)
    kinds = {CharTokenizer.kind: CharTokenizer, SentencePieceTokenizer.kind: SentencePieceTokenizer}
    if d["kind"] not in kinds:
        raise DataError(_json_path(path), f"unknown tokenizer kind {d['kind']!r}",
                        f"expected one of {sorted(kinds)}")
    return kinds[d["kind"]].load(path)
