"""What a transcription returns (:class:`Transcript`) and its text, JSON and SRT forms.

Example
-------
>>> from cald_speech.inference.align import Word
>>> print(Transcript("HI", [Word("HI", 0.0, 0.3, 0.9)], duration=1.0).format("srt"))
1
00:00:00,000 --> 00:00:00,300
HI
<BLANKLINE>
"""

import json
from dataclasses import dataclass, field

from cald_speech.data.audio import SAMPLE_RATE
from cald_speech.errors import ConfigError
from cald_speech.inference.settings import FORMATS


def _srt_time(seconds):
    ms = int(round(max(seconds, 0.0) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(words, max_chars=42, max_duration=6.0, max_gap=1.0):
    """SubRip subtitles from timed words: cues of at most ``max_chars`` characters.

    A new cue starts when the line would grow past ``max_chars``, last longer than
    ``max_duration`` seconds, or after a pause longer than ``max_gap`` seconds.

    Example
    -------
    >>> from cald_speech.inference.align import Word
    >>> print(to_srt([Word("HELLO", 0.0, 0.5, 1.0), Word("WORLD", 0.6, 1.0, 1.0),
    ...               Word("AGAIN", 3.0, 3.4, 1.0)]))
    1
    00:00:00,000 --> 00:00:01,000
    HELLO WORLD
    <BLANKLINE>
    2
    00:00:03,000 --> 00:00:03,400
    AGAIN
    <BLANKLINE>
    """
    cues, line = [], []
    for w in words:
        if line:
            text = " ".join(x.word for x in line + [w])
            if (len(text) > max_chars or w.end - line[0].start > max_duration
                    or w.start - line[-1].end > max_gap):
                cues.append(line)
                line = []
        line.append(w)
    if line:
        cues.append(line)
    blocks = []
    for i, cue in enumerate(cues, start=1):
        end = max(cue[-1].end, cue[0].start + 0.001)
        blocks.append(f"{i}\n{_srt_time(cue[0].start)} --> {_srt_time(end)}\n"
                      f"{' '.join(w.word for w in cue)}\n")
    return "\n".join(blocks)


@dataclass
class Transcript:
    """What :class:`Transcriber` returns for one input.

    Attributes
    ----------
    text : str
        The transcript.
    words : list of Word
        Timed words (empty when timestamps were not asked for).
    duration : float
        Seconds of audio.
    sample_rate : int
        The input's original sample rate (before resampling to 16 kHz).
    channels : int
        The input's channel count (before downmixing).
    path : str or None
        The file, when transcribed from one.
    mode : str
        How it was computed (``one-pass``, ``windowed``, ``plain``, ``silent``).
    """

    text: str
    words: list = field(default_factory=list)
    duration: float = 0.0
    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    path: str = None
    mode: str = ""

    def to_dict(self):
        """JSON-ready dict: path, text, duration, original rate/channels, mode, words."""
        return {
            "path": self.path,
            "text": self.text,
            "duration": round(self.duration, 3),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "mode": self.mode,
            "words": [w.to_dict() for w in self.words],
        }

    def to_json(self, indent=2):
        """The transcript as a JSON document."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_srt(self, **kwargs):
        """The timed words as SubRip subtitles (see :func:`to_srt`)."""
        return to_srt(self.words, **kwargs)

    def format(self, fmt):
        """``"txt"``, ``"json"`` or ``"srt"`` text of the transcript.

        Example
        -------
        >>> from cald_speech.inference.align import Word
        >>> t = Transcript("HI", [Word("HI", 0.0, 0.3, 0.9)], duration=1.0)
        >>> t.format("txt")
        'HI\\n'
        >>> json.loads(t.format("json"))["words"][0]["end"]
        0.3
        """
        if fmt == "txt":
            return self.text + "\n"
        if fmt == "json":
            return self.to_json() + "\n"
        if fmt == "srt":
            return self.to_srt()
        raise ConfigError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
