"""Greedy CTC alignment: the transcript with timed, scored words.

Frame ``t`` starts at ``t * frame_shift`` seconds (the CNN's stride over 16 kHz: 20 ms
for wav2vec2); a word's confidence is the mean of the frame posteriors of the tokens
aligned to it (:func:`align_words`).
"""

import torch

from cald_speech.decoding import Word
from cald_speech.errors import ConfigError

__all__ = ["Word", "align_words"]


def _word_starts(tokenizer, ids):
    """For each token id: (is a word separator, starts a new word)."""
    from cald_speech.data.hub_tokenizer import HubCTCTokenizer
    from cald_speech.data.tokenizer import CharTokenizer, SentencePieceTokenizer

    if isinstance(tokenizer, (CharTokenizer, HubCTCTokenizer)):
        return [(i == tokenizer.word_sep_id, False) for i in ids]
    if isinstance(tokenizer, SentencePieceTokenizer):
        pieces = [tokenizer.sp.id_to_piece(i) for i in ids]
        return [(p == "\u2581", p.startswith("\u2581")) for p in pieces]
    raise ConfigError(f"no word alignment for a {type(tokenizer).__name__}")


def align_words(log_probs, tokenizer, frame_shift, duration=None):
    """Greedy CTC decoding with word timestamps and confidences.

    The argmax path is collapsed into runs; each non-blank run is one token aligned to
    its frames. Words are split at the word separator (character tokenizers) or at
    pieces starting with ``▁`` (SentencePiece). A word starts at its first token's
    first frame and ends after its last token's last frame; its confidence is the mean
    of the maximum posterior over its tokens' frames.

    Arguments
    ---------
    log_probs : torch.Tensor
        (T, V) log posteriors (blank = 0).
    tokenizer : CharTokenizer, SentencePieceTokenizer or HubCTCTokenizer
        The model's tokenizer.
    frame_shift : float
        Seconds per frame (CNN stride / 16 kHz).
    duration : float, optional
        Audio duration; word ends are clipped to it.

    Returns
    -------
    text : str
        ``tokenizer.decode_ctc`` of the argmax path.
    words : list of Word

    Example
    -------
    >>> import torch
    >>> from cald_speech.data.tokenizer import CharTokenizer
    >>> tok = CharTokenizer()  # 0 blank, 1 "|", 2 A, 3 B, ...
    >>> path = [0, 2, 2, 0, 1, 3, 0, 3]  # A | B B
    >>> lp = torch.log(torch.nn.functional.one_hot(torch.tensor(path), 29).float() * 0.9 + 0.001)
    >>> text, words = align_words(lp, tok, 0.02)
    >>> text, [(w.word, w.start, w.end) for w in words]
    ('A BB', [('A', 0.02, 0.06), ('BB', 0.1, 0.16)])
    """
    if log_probs.shape[0] == 0:
        return "", []
    best, ids = log_probs.float().max(dim=-1)
    probs = best.exp()
    ids_list = ids.tolist()
    text = tokenizer.decode_ctc(ids_list)
    values, counts = torch.unique_consecutive(ids, return_counts=True)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    csum = torch.cat([probs.new_zeros(1), torch.cumsum(probs.double(), 0).float()])
    runs = [(v, s, e) for v, s, e in zip(values.tolist(), starts.tolist(), ends.tolist())
            if v != 0]
    flags = _word_starts(tokenizer, [v for v, _, _ in runs])
    groups, current = [], []
    for (v, s, e), (is_sep, starts_word) in zip(runs, flags):
        if is_sep or (starts_word and current):
            if current:
                groups.append(current)
            current = []
        if not is_sep:
            current.append((v, s, e))
    if current:
        groups.append(current)
    words = []
    limit = float("inf") if duration is None else float(duration)
    for group in groups:
        word = tokenizer.decode([v for v, _, _ in group]).strip()
        if not word:
            continue
        mass = sum(float(csum[e] - csum[s]) for _, s, e in group)
        frames = sum(e - s for _, s, e in group)
        start = min(group[0][1] * frame_shift, limit)
        end = min(group[-1][2] * frame_shift, limit)
        words.append(Word(word, round(start, 6), round(end, 6), mass / frames))
    return text, words
