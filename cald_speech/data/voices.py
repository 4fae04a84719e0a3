"""Voice identities of the corpus synthesizer and the engines that speak them.

Three offline text-to-speech engines from Debian's main archive are used: espeak-ng
(formant synthesis; accents and ``+m3``/``+f2`` style variants), flite (kal, kal16,
awb, rms, slt) and festival (kal_diphone, ked_diphone, cmu_us_slt_arctic_hts). A
*voice identity* is an engine voice plus a fixed, speaker-specific offset: a spectral
shift in semitones (pitch and formants move together, as with a resampling trick), a
tempo factor and a bass/treble tilt, all applied with sox. Each identity is one
speaker of the synthetic corpora and has a fixed numeric speaker id.

Example
-------
>>> voices = list_voices()
>>> len(voices) >= 20, len({v.engine for v in voices})
(True, 3)
>>> v = get_voice("flite-slt-a")
>>> v.speaker, v.engine, v.voice, v.sex
(1014, 'flite', 'slt', 'F')
>>> [v.name for v in select_voices(["festival:ked_diphone"])]
['festival-ked_diphone', 'festival-ked_diphone-a', 'festival-ked_diphone-b']
"""

import functools
import math
import os
import select
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from cald_speech.errors import ConfigError, ToolError

__all__ = [
    "Voice",
    "ENGINES",
    "list_voices",
    "get_voice",
    "select_voices",
    "check_tools",
    "available",
    "Speaker",
]

#: Sample rate of everything :class:`Speaker` returns.
SAMPLE_RATE = 16000
#: Engine name -> the program it runs.
ENGINES = {"espeak": "espeak-ng", "flite": "flite", "festival": "festival"}
#: Program -> Debian package that provides it.
APT_PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival", "sox": "sox"}
#: Festival voice -> Debian package that provides it.
FESTIVAL_VOICE_PACKAGES = {
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
}
#: Voices built into Debian's flite (awb_time is left out: it only speaks times).
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
#: espeak-ng's default speaking rate in words per minute.
ESPEAK_WPM = 175


@dataclass(frozen=True)
class Voice:
    """One voice identity (one speaker of a synthetic corpus).

    Arguments
    ---------
    name : str
        Unique name, e.g. ``flite-slt-a``.
    speaker : int
        LibriSpeech-like numeric speaker id.
    engine : str
        ``espeak``, ``flite`` or ``festival``.
    voice : str
        The engine's own voice name (espeak: ``<voice>+<variant>``).
    sex : str
        ``M`` or ``F`` (of the engine voice).
    shift : float
        Fixed spectral shift in semitones (pitch and formants together).
    tempo : float
        Fixed speaking-rate factor (> 1 is faster).
    bass, treble : float
        Fixed tilt in dB (sox ``bass``/``treble``).
    """

    name: str
    speaker: int
    engine: str
    voice: str
    sex: str
    shift: float = 0.0
    tempo: float = 1.0
    bass: float = 0.0
    treble: float = 0.0

    @property
    def base(self):
        """``engine:voice``, the engine voice this identity is built on."""
        return f"{self.engine}:{self.voice}"

    def describe(self):
        """One line for READMEs: the engine voice and the offsets."""
        parts = [self.base]
        if self.shift:
            parts.append(f"shift {self.shift:+.1f} st")
        if self.tempo != 1.0:
            parts.append(f"tempo x{self.tempo:.2f}")
        if self.bass or self.treble:
            parts.append(f"bass {self.bass:+.0f} dB, treble {self.treble:+.0f} dB")
        return ", ".join(parts)

    def to_dict(self):
        """A JSON-ready dict of the fields."""
        return asdict(self)


def _build_table():
    # (engine, voice, sex); flite and festival voices get two offset identities each.
    natural = [("flite", v, "F" if v == "slt" else "M") for v in FLITE_VOICES] + [
        ("festival", "kal_diphone", "M"),
        ("festival", "ked_diphone", "M"),
        ("festival", "cmu_us_slt_arctic_hts", "F"),
    ]
    # Offsets of the "-a" (higher, faster, brighter) and "-b" (lower, slower, darker)
    # identities; varied a little from one engine voice to the next.
    offsets_a = [(2.5, 1.06, -2, 2), (2.0, 1.08, -1, 3), (3.0, 1.05, -3, 2), (2.0, 1.07, -2, 1)]
    offsets_b = [(-2.0, 0.94, 3, -2), (-2.5, 0.93, 2, -3), (-1.5, 0.95, 3, -1), (-2.0, 0.92, 2, -2)]
    espeak = [
        ("en-us+m3", "M"),
        ("en-us+f2", "F"),
        ("en-gb+m1", "M"),
        ("en-gb+f3", "F"),
        ("en-gb-scotland+m4", "M"),
        ("en-gb-scotland+f1", "F"),
        ("en-gb-x-rp+m2", "M"),
        ("en-gb-x-rp+f4", "F"),
        ("en-029+m5", "M"),
        ("en-029+f5", "F"),
        ("en-gb-x-gbclan+m7", "M"),
        ("en-gb-x-gbcwmd+m6", "M"),
    ]
    table = []
    speaker = 1001
    for i, (engine, voice, sex) in enumerate(natural):
        a, b = offsets_a[i % len(offsets_a)], offsets_b[i % len(offsets_b)]
        for suffix, (shift, tempo, bass, treble) in (("", (0.0, 1.0, 0, 0)), ("-a", a), ("-b", b)):
            table.append(
                Voice(f"{engine}-{voice}{suffix}", speaker, engine, voice, sex,
                      shift, tempo, float(bass), float(treble))
            )
            speaker += 1
    for voice, sex in espeak:
        table.append(Voice(f"espeak-{voice}", speaker, "espeak", voice, sex))
        speaker += 1
    return tuple(table)


_VOICES = _build_table()
_BY_NAME = {v.name: v for v in _VOICES}


def list_voices(available_only=False):
    """All voice identities, in speaker-id order.

    Arguments
    ---------
    available_only : bool
        Keep only the identities whose engine and engine voice are installed.

    Returns
    -------
    list of Voice

    Example
    -------
    >>> names = [v.name for v in list_voices()]
    >>> names[:3]
    ['flite-kal', 'flite-kal-a', 'flite-kal-b']
    >>> "espeak-en-gb-scotland+m4" in names
    True
    """
    voices = list(_VOICES)
    if available_only:
        voices = [v for v in voices if available(v)]
    return voices


def get_voice(name):
    """The identity called ``name`` (a :class:`Voice` passes through).

    Raises
    ------
    ConfigError
        For an unknown name; the message lists the known ones.
    """
    if isinstance(name, Voice):
        return name
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(
            f"unknown voice {name!r}; known voices: {', '.join(_BY_NAME)} "
            "(see `cald-synth voices`)"
        ) from None


def select_voices(specs=None, engines=None):
    """Voice identities chosen by name, by engine voice or by engine.

    Arguments
    ---------
    specs : list of str, optional
        Each an identity name (``flite-slt-a``), an engine voice (``flite:slt``,
        ``espeak:en-us+f2``: all identities built on it) or an engine (``flite``).
        ``None`` means all identities.
    engines : list of str, optional
        Keep only identities of these engines.

    Returns
    -------
    list of Voice
        In speaker-id order, without repeats.

    Raises
    ------
    ConfigError
        For an unknown engine, engine voice or identity (the message lists the known
        ones), or when nothing is left.

    Example
    -------
    >>> [v.name for v in select_voices(["flite-kal", "espeak:en-us+f2"])]
    ['flite-kal', 'espeak-en-us+f2']
    >>> len(select_voices(engines=["festival"]))
    9
    >>> select_voices(["flite:bogus"])
    Traceback (most recent call last):
    ...
    cald_speech.errors.ConfigError: unknown flite voice 'bogus'; known: kal, kal16, awb, rms, slt
    """
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    if isinstance(engines, str):
        engines = [e for e in engines.split(",") if e.strip()]
    for engine in engines or ():
        _check_engine(engine)
    chosen = []
    for spec in specs if specs is not None else [v.name for v in _VOICES]:
        spec = spec.strip()
        if spec in _BY_NAME:
            chosen.append(_BY_NAME[spec])
        elif spec in ENGINES:
            chosen += [v for v in _VOICES if v.engine == spec]
        elif ":" in spec:
            engine, voice = spec.split(":", 1)
            _check_engine(engine)
            found = [v for v in _VOICES if v.engine == engine and v.voice == voice]
            if not found:
                known = list(dict.fromkeys(v.voice for v in _VOICES if v.engine == engine))
                raise ConfigError(
                    f"unknown {engine} voice {voice!r}; known: {', '.join(known)}"
                )
            chosen += found
        else:
            get_voice(spec)  # raises with the list of names
    keep = set(engines) if engines else None
    chosen = [v for v in chosen if keep is None or v.engine in keep]
    chosen = sorted(dict.fromkeys(chosen), key=lambda v: v.speaker)
    if not chosen:
        raise ConfigError(f"no voice left after selecting {specs} with engines {engines}")
    return chosen


def _check_engine(engine):
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; known engines: {', '.join(ENGINES)}")


def _tool_error(program):
    pkg = APT_PACKAGES[program]
    return ToolError(
        f"'{program}' was not found on PATH (fix: sudo apt-get install -y {pkg}, "
        "or run `make install`, or leave its voices out)"
    )


@functools.cache
def _festival_voices(path_env):
    # Festival's own list of installed voices (cached per PATH).
    del path_env
    try:
        out = subprocess.run(
            ["festival", "-b", "(print (voice.list))"],
            capture_output=True, text=True, timeout=60, check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(out.replace("(", " ").replace(")", " ").split())


def _missing(voice):
    """None when ``voice`` can be spoken here, else a ToolError saying what to install."""
    program = ENGINES[voice.engine]
    for tool in (program, "sox"):
        if shutil.which(tool) is None:
            return _tool_error(tool)
    if voice.engine == "festival":
        if voice.voice not in _festival_voices(os.environ.get("PATH", "")):
            pkg = FESTIVAL_VOICE_PACKAGES.get(voice.voice, "the festvox package of the voice")
            return ToolError(
                f"festival voice '{voice.voice}' is not installed (fix: sudo apt-get install "
                f"-y {pkg}, or leave its identities out)"
            )
    return None


def available(voice):
    """True when the engine, the engine voice and sox are installed for ``voice``.

    Example
    -------
    >>> available(get_voice("flite-slt"))
    True
    """
    return _missing(get_voice(voice)) is None


def check_tools(voices):
    """Checks that every program and engine voice needed by ``voices`` is installed.

    Arguments
    ---------
    voices : list of Voice

    Raises
    ------
    ToolError
        Naming the missing program or festival voice and the apt package to install.

    Example
    -------
    >>> check_tools(select_voices(["flite:slt"]))
    """
    for voice in voices:
        err = _missing(voice)
        if err is not None:
            raise err


def _run(cmd, what, **kwargs):
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=300, check=False, **kwargs)
    except FileNotFoundError:
        raise _tool_error(cmd[0]) from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"{what}: '{cmd[0]}' did not finish within 300 s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ToolError(
            f"{what}: '{' '.join(cmd[:3])} ...' failed with exit code {proc.returncode}"
            + (f": {err[-1]}" if err else "")
        )
    return proc.stdout


class _FestivalServer:
    """One long-lived ``festival --pipe`` process speaking one voice."""

    def __init__(self, voice, timeout=300.0):
        self.voice = voice
        self.timeout = timeout
        self.hts = voice.endswith("_hts")
        self._count = 0
        try:
            self.proc = subprocess.Popen(
                ["festival", "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise _tool_error("festival") from None
        setup = f"(voice_{voice})"
        if self.hts:
            setup += "(set! cald_hts_base hts_engine_params)"
        self._call(setup, "loading the voice")

    def _call(self, expr, what):
        self._count += 1
        marker = f"CALD-SYNTH-DONE-{self._count}".encode()
        try:
            self.proc.stdin.write(expr.encode() + b'\n(format stderr "%s\\n" "' + marker + b'")\n')
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise ToolError(f"festival ({self.voice}) exited while {what}") from None
        fd = self.proc.stderr.fileno()
        buf = b""
        while marker not in buf:
            ready, _, _ = select.select([fd], [], [], self.timeout)
            if not ready:
                self.close()
                raise ToolError(f"festival ({self.voice}) gave no answer in {self.timeout} s "
                                f"while {what}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ToolError(
                    f"festival ({self.voice}) exited while {what}: "
                    + buf.decode("utf-8", "replace").strip()[-300:]
                )
            buf += chunk
        return buf.split(marker)[0].decode("utf-8", "replace")

    def synth(self, text, path, rate):
        if self.hts:
            expr = (f'(set! hts_engine_params (append cald_hts_base '
                    f'(list (list "-r" {rate:.4f}))))')
        else:
            expr = f"(Parameter.set 'Duration_Stretch {1.0 / rate:.4f})"
        expr += f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{path}" \'riff)'
        if os.path.exists(path):
            os.remove(path)
        log = self._call(expr, f"speaking {text!r}")
        if not os.path.exists(path) or os.path.getsize(path) <= 44:
            raise ToolError(f"festival ({self.voice}) wrote no audio for {text!r}: "
                            + log.strip()[-300:])

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class Speaker:
    """Speaks text with any voice identity; returns 16 kHz mono float32 audio.

    Keeps one ``festival --pipe`` process per festival voice alive between calls (a
    festival start costs ~0.3 s) and a scratch folder for the engines' wav files; use
    it as a context manager or call :meth:`close`.

    Arguments
    ---------
    tmpdir : str, optional
        Scratch folder (a private temporary folder by default).

    Example
    -------
    >>> with Speaker() as speaker:
    ...     wav = speaker.speak("hello world", "flite-kal-a", rate=1.1, shift=0.5)
    >>> wav.dtype, wav.ndim, 0.3 < len(wav) / SAMPLE_RATE < 3.0, float(abs(wav).max()) > 0.01
    (dtype('float32'), 1, True, True)
    """

    def __init__(self, tmpdir=None):
        self._own_tmp = tmpdir is None
        self.tmpdir = tmpdir or tempfile.mkdtemp(prefix="cald-synth-")
        self._festival = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stops the festival processes and removes the scratch folder."""
        for server in self._festival.values():
            server.close()
        self._festival.clear()
        if self._own_tmp:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def _engine_wav(self, text, voice, rate):
        path = os.path.join(self.tmpdir, f"{voice.engine}.wav")
        what = f"{voice.name} speaking {text!r}"
        if voice.engine == "espeak":
            wpm = max(80, min(450, round(ESPEAK_WPM * rate)))
            _run(["espeak-ng", "-v", voice.voice, "-s", str(wpm), "-w", path, "--stdin"], what,
                 input=text.encode())
        elif voice.engine == "flite":
            _run(["flite", "-voice", voice.voice, "--setf", f"duration_stretch={1.0 / rate:.4f}",
                  "-t", text, "-o", path], what)
        else:
            server = self._festival.get(voice.voice)
            if server is None:
                server = self._festival[voice.voice] = _FestivalServer(voice.voice)
            server.synth(text, path, rate)
        return path

    def speak(self, text, voice, rate=1.0, shift=0.0):
        """Speaks ``text`` with ``voice``.

        Arguments
        ---------
        text : str
            Words to say: letters, apostrophes and spaces (normalise first).
        voice : Voice or str
            Identity or its name.
        rate : float
            Speaking-rate factor on top of the identity's tempo (> 1 is faster).
        shift : float
            Spectral shift in semitones on top of the identity's shift.

        Returns
        -------
        numpy.ndarray
            (T,) float32 at 16 kHz, as loud as the engine made it (not normalised).
        """
        voice = get_voice(voice)
        text = " ".join(str(text).replace('"', " ").replace("\\", " ").split())
        if not text:
            raise ConfigError("nothing to say: the text is empty")
        path = self._engine_wav(text, voice, rate * voice.tempo)
        effects = ["gain", "-6"]
        cents = 100.0 * (voice.shift + shift)
        if abs(cents) >= 1.0:
            effects += ["pitch", f"{cents:.1f}"]
        if voice.bass:
            effects += ["bass", f"{voice.bass:+.1f}"]
        if voice.treble:
            effects += ["treble", f"{voice.treble:+.1f}"]
        effects += ["rate", "-v", str(SAMPLE_RATE)]
        raw = _run(
            ["sox", "-R", "-q", path, "-t", "raw", "-e", "floating-point", "-b", "32", "-L",
             "-c", "1", "-r", str(SAMPLE_RATE), "-", *effects],
            f"sox processing {voice.name} speaking {text!r}",
        )
        wav = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if wav.size == 0 or not math.isfinite(float(np.abs(wav).max())):
            raise ToolError(f"{voice.name} produced no usable audio for {text!r}")
        return wav
