"""The command lines of ``cald-bench``'s commands, importable without torch.

``cald-bench COMMAND --help`` and a usage error answer from these parsers before the
command's module (and torch) is imported; each command's ``main`` parses with the same
parser. They follow :mod:`cald_speech.cli`: every default and choice in ``--help``,
``--output-dir`` for the results folder (``--out-dir`` still works, deprecated), lists
of values separated by spaces (comma-separated lists still work, deprecated).

Example
-------
>>> args = PARSERS["speed"]().parse_args(["--shape", "wav2vec2-base", "--minutes", "1", "0.5"])
>>> args.minutes, args.systems, args.repeats
([0.5, 1.0], ['teacher-onepass', 'teacher-windowed', 'student-onepass'], 3)
"""

import argparse

from cald_speech.cli import MIXER_NAMES, ListAction, add_verbose, deprecated_option, make_parser
from cald_speech.decoding import DEFAULT_BEAM_SIZE, add_decoding_options
from cald_speech.inference.settings import (
    DEFAULT_NORM_WINDOW_S,
    DEFAULT_OVERLAP_S,
    DEFAULT_PROJECTION_CACHE_MB,
    DEFAULT_WINDOW_S,
    MODES,
    PRECISIONS,
)

#: ``cald-bench speed``: the systems (those run by default first), public shapes, lengths.
DEFAULT_SYSTEMS = ("teacher-onepass", "teacher-windowed", "student-onepass")
SYSTEMS = (*DEFAULT_SYSTEMS, "teacher-layers", "layers-onepass")
SHAPES = ("wav2vec2-base", "wav2vec2-large-lv60")
#: Minutes of audio by default: a run of minutes on a CPU; give 60 for the long end.
DEFAULT_MINUTES = (0.25, 0.5, 1.0, 2.0)
DEFAULT_REPEATS = 3
#: ``cald-bench decoding``: the LM weight and word bonus grids searched on dev.
LM_WEIGHTS = (0.25, 0.5, 0.75, 1.0, 1.5)
WORD_BONUSES = (0.0, 1.0, 2.0, 3.0)
#: ``cald-bench mixers``: defaults.
DEFAULT_LENGTHS = (250, 500, 1000, 2000, 4000, 7500, 15000, 30000)
DEFAULT_MIXERS = ("attention", "bimamba2", "bimamba2_shared", "linear_attention", "linformer")


def _positive_minutes(text):
    value = float(text)
    if value <= 0:
        raise ValueError("minutes must be positive")
    return value


class _SortedMinutes(ListAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        setattr(namespace, self.dest, sorted(set(getattr(namespace, self.dest))))


def _output_dir(p, default, what):
    """``--output-dir`` (``--out-dir``: deprecated) and ``--verbose``, every command's."""
    p.add_argument("--output-dir", default=default, metavar="DIR", help=what)
    deprecated_option(p, "--out-dir", "--output-dir")
    add_verbose(p)


def add_teacher_student_arguments(p):
    """The arguments the teacher-vs-student benchmarks share (models, test CSV, text)."""
    p.add_argument("--teacher", required=True, metavar="DIR",
                   help="packaged teacher folder, or a hub id in the local Hugging Face cache")
    p.add_argument("--student", required=True, metavar="DIR", help="packaged student folder")
    p.add_argument("--csv", required=True, help="SpeechBrain CSV (ID,duration,wav,...,wrd)")
    p.add_argument("--text-column", default="wrd", help="transcript column")
    p.add_argument("--data-root", default=None, help="value of $data_root in the wav column")
    p.add_argument("--normalize", action="store_true",
                   help="normalise the references (numbers, abbreviations, punctuation)")
    return p


def wer_parser():
    """The ``cald-bench wer`` argument parser."""
    p = make_parser("cald-bench wer",
                    "WER/CER of a teacher and a student on the same test items, the "
                    "student's agreement with the teacher (the WER of its transcripts "
                    "against the teacher's), and per-utterance differences.")
    add_teacher_student_arguments(p)
    p.add_argument("--limit", type=int, default=None, help="first N items only")
    p.add_argument("--batch-size", type=int, default=8, help="items per padded batch")
    p.add_argument("--mode", default="auto", choices=MODES, help="Transcriber mode")
    p.add_argument("--window-s", type=float, default=DEFAULT_WINDOW_S,
                   help="teacher window (s)")
    p.add_argument("--overlap-s", type=float, default=DEFAULT_OVERLAP_S,
                   help="window context per side (s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="compute precision of both models")
    p.add_argument("--student-precision", default=None, choices=PRECISIONS,
                   help="the student's own precision (default: --precision); with the "
                        "same folder twice, this measures what bf16 changes")
    _output_dir(p, "results/bench_wer", "where wer.json and the per-utterance files go")
    add_decoding_options(p)
    p.add_argument("--tune-lm", action="store_true",
                   help="choose each model's --lm-weight and --word-bonus on --dev-csv (a "
                        "small grid) before the test items are decoded once")
    p.add_argument("--dev-csv", default=None, help="dev manifest for --tune-lm")
    return p


def decoding_parser():
    """The ``cald-bench decoding`` argument parser."""
    p = make_parser("cald-bench decoding",
                    "Greedy vs beam search vs beam search + n-gram LM on the same "
                    "posteriors; LM weights chosen on a dev split only.")
    p.add_argument("--model", action=ListAction, required=True, metavar="DIR",
                   help="model folders or hub ids (several: --model A B)")
    p.add_argument("--csv", required=True, help="test manifest (ID,duration,wav,...,wrd)")
    p.add_argument("--dev-csv", default=None,
                   help="dev manifest the LM weight and word bonus are chosen on (needed "
                        "with --lm)")
    p.add_argument("--lm", default=None, help="KenLM ARPA or binary file")
    p.add_argument("--beam-size", type=int, default=DEFAULT_BEAM_SIZE, help="beam width")
    p.add_argument("--lm-weights", action=ListAction, item_type=float, default=None,
                   metavar="A", help="grid of LM weights (default: the engine's, "
                   f"speechbrain {' '.join(map(str, LM_WEIGHTS))})")
    p.add_argument("--word-bonuses", action=ListAction, item_type=float, default=None,
                   metavar="B", help="grid of word bonuses (default: the engine's, "
                   f"speechbrain {' '.join(map(str, WORD_BONUSES))})")
    p.add_argument("--beam-engine", action=ListAction, default=["auto"],
                   metavar="ENGINE", help="beam-search engines compared (auto, flashlight, "
                   "speechbrain; several: --beam-engine flashlight speechbrain)")
    p.add_argument("--text-column", default="wrd", help="transcript column")
    p.add_argument("--normalize", action="store_true",
                   help="normalise the references (numbers, abbreviations, punctuation)")
    p.add_argument("--limit", type=int, default=None, help="first N items of each split")
    p.add_argument("--mode", default="auto", choices=MODES, help="Transcriber mode")
    p.add_argument("--long-minutes", type=float, default=0.0,
                   help="also time decoding against transcribing the test audio "
                        "concatenated to this many minutes (default: 0, off)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    _output_dir(p, "results/bench_decoding", "where decoding.json and decoding.png go")
    return p


def speed_parser():
    """The ``cald-bench speed`` argument parser."""
    p = make_parser("cald-bench speed",
                    "Wall time, real-time factor and peak memory vs audio length of the "
                    "teacher (one pass and windowed) and the student (one pass): each "
                    "configuration warmed up, then timed --repeats times (best and spread "
                    "reported).")
    src = p.add_mutually_exclusive_group(required=False)
    src.add_argument("--model", nargs="+", metavar="DIR", default=None,
                     help="packaged model folders (teachers and/or students) or hub ids "
                          "in the local Hugging Face cache")
    src.add_argument("--shape", nargs="+", choices=SHAPES, default=None,
                     help="build a random-weight CTC teacher of this architecture and its "
                          "student (no folders needed)")
    p.add_argument("--minutes", action=_SortedMinutes, item_type=_positive_minutes,
                   default=list(DEFAULT_MINUTES), metavar="M",
                   help="audio lengths in minutes (e.g. --minutes 0.5 1 5 10 30 60)")
    p.add_argument("--systems", action=ListAction, allowed=SYSTEMS,
                   default=list(DEFAULT_SYSTEMS), metavar="SYSTEM", help="systems to run")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                   help="timed transcriptions per configuration, after a warm-up one")
    p.add_argument("--window-s", type=float, default=DEFAULT_WINDOW_S,
                   help="teacher window (s)")
    p.add_argument("--overlap-s", type=float, default=DEFAULT_OVERLAP_S,
                   help="teacher context on each side of a window (s)")
    p.add_argument("--mixers", action=ListAction, allowed=MIXER_NAMES, default=["bimamba2"],
                   metavar="MIXER",
                   help="student mixers for --shape: one teacher, one student per mixer, "
                        "all in the same run")
    deprecated_option(p, "--mixer", "--mixers")
    p.add_argument("--projection-cache-mb", type=float, default=DEFAULT_PROJECTION_CACHE_MB,
                   metavar="MB",
                   help="one-pass student with a shared-projection mixer: memory for the "
                        "input projections its backward scan reuses (0: recompute them)")
    p.add_argument("--tiny", action="store_true",
                   help="--shape with tiny widths (for tests and smoke runs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="compute precision of every system (bf16: matrix products in "
                        "bfloat16, cald_speech.inference.precision)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own)")
    p.add_argument("--time-cap", type=float, default=3600.0,
                   help="skip a configuration predicted to take longer (s)")
    p.add_argument("--mem-cap-gb", type=float, default=None,
                   help="skip a configuration predicted to need more (default: 60%% of RAM "
                        "on CPU, 80%% of GPU memory on CUDA)")
    _output_dir(p, "results/bench_speed", "where speed.json and speed.png go")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--in-process", action="store_true",
                   help="run every configuration in this process (smoke tests only: peak "
                        "memory is then not per configuration)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def longform_parser():
    """The ``cald-bench longform`` argument parser."""
    p = make_parser("cald-bench longform",
                    "WER, time and memory of the windowed teacher and the one-pass student "
                    "on one long recording made of test utterances with known text, and "
                    "each system's agreement with the windowed teacher.")
    add_teacher_student_arguments(p)
    p.add_argument("--minutes", type=float, default=None,
                   help="length of the recording (cycles through the items; default: each "
                        "item once)")
    p.add_argument("--gap-s", type=float, default=0.5, help="silence between utterances (s)")
    p.add_argument("--window-s", type=float, default=DEFAULT_WINDOW_S,
                   help="teacher window (s)")
    p.add_argument("--overlap-s", type=float, default=DEFAULT_OVERLAP_S,
                   help="window context per side (s)")
    p.add_argument("--norm-window-s", type=float, default=DEFAULT_NORM_WINDOW_S, metavar="S",
                   help="one-pass systems, group-norm CNN: seconds of audio whose statistics "
                        "normalise each stretch (0: the whole recording)")
    p.add_argument("--teacher-onepass", action="store_true",
                   help="also run the teacher over the whole recording at once")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own)")
    p.add_argument("--timeout", type=float, default=7200.0, help="per-system time limit (s)")
    _output_dir(p, "results/bench_longform", "where the recording, longform.json and the "
                                             "reference text go")
    add_decoding_options(p)  # teacher and student decoded alike
    p.add_argument("--in-process", action="store_true",
                   help="run the systems in this process (smoke tests only: peak memory is "
                        "then not per system)")
    return p


def compare_parser():
    """The ``cald-bench compare`` argument parser."""
    p = make_parser("cald-bench compare",
                    "Paired bootstrap of two models on the same test items: WER/CER of "
                    "CTC runs, intent/scenario/action accuracy of intent runs.")
    p.add_argument("--a", action=ListAction, required=True, metavar="RUN",
                   help="run folder(s) of side A")
    p.add_argument("--b", action=ListAction, required=True, metavar="RUN",
                   help="run folder(s) of side B, paired with --a in order (e.g. per seed)")
    p.add_argument("--split", default="test-clean",
                   help="the split to compare on (the intent recipe's: test)")
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap draws")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    _output_dir(p, None, "also write compare.json here (default: only print the table)")
    return p


def runs_parser():
    """The ``cald-bench runs`` argument parser."""
    p = make_parser("cald-bench runs",
                    "Result table (metrics per split, updates, wall time, parameters), "
                    "training curves and held-out learning curves of recipe runs.")
    p.add_argument("folders", nargs="+", help="run folders (output_folder of a recipe)")
    p.add_argument("--names", action=ListAction, default=None, metavar="NAME",
                   help="a name per folder (default: the folders)")
    p.add_argument("--metrics", action=ListAction, default=["WER", "CER"], metavar="METRIC",
                   help="metrics to tabulate and plot")
    _output_dir(p, "results/runs_summary", "where runs.json, runs.md and the plots go")
    return p


def layers_parser():
    """The ``cald-bench layers`` argument parser."""
    p = make_parser("cald-bench layers",
                    "Layer students vs their teacher: parameters, L1/cos to the teacher's "
                    "layers and CTC-probe CER/WER, from distill and probe recipe runs.")
    p.add_argument("folder", help="folder holding distill runs and probe runs")
    p.add_argument("--split", default="test", help="test split to report")
    _output_dir(p, None, "where layers.json goes (default: FOLDER)")
    return p


def mixers_parser():
    """The ``cald-bench mixers`` argument parser (defaults completed by the command)."""
    p = make_parser("cald-bench mixers",
                    "Time and peak memory of token mixers vs SDPA attention as T grows.")
    p.add_argument("--mixers", action=ListAction, allowed=MIXER_NAMES, default=None,
                   metavar="MIXER",
                   help=f"mixers to measure (default: {' '.join(DEFAULT_MIXERS)}); "
                        "attention is always added as the reference")
    p.add_argument("--hidden", action=ListAction, item_type=int, default=None,
                   help="hidden sizes (default: 768 1024); heads = hidden // 64")
    p.add_argument("--lengths", action=ListAction, item_type=int, default=None,
                   help=f"sequence lengths in frames (default: "
                        f"{' '.join(map(str, DEFAULT_LENGTHS))})")
    p.add_argument("--modes", action=ListAction, allowed=("fwd", "fwdbwd"), default=None,
                   help="forward only and/or forward+backward (default: both)")
    p.add_argument("--devices", action=ListAction, allowed=("cpu", "cuda"), default=None,
                   help="default: cpu, plus cuda when available")
    p.add_argument("--batch", type=int, default=1, help="batch size")
    p.add_argument("--repeats", type=int, default=None, help="timed passes (default 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own)")
    p.add_argument("--d-state", type=int, default=64, help="BiMamba2 d_state")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="SSD chunk size (default: each kernel's own)")
    p.add_argument("--time-cap", type=float, default=120.0,
                   help="skip a configuration predicted to take longer per pass (s)")
    p.add_argument("--mem-cap-gb", type=float, default=None,
                   help="skip a configuration predicted to need more memory (default: "
                        "60%% of RAM on CPU, 80%% of GPU memory on CUDA)")
    p.add_argument("--quick", action="store_true",
                   help="quick preset: hidden 768, T in 250 1000 4000, forward, 3 repeats")
    _output_dir(p, "results/bench_mixers", "where mixers.json and the PNG plots go")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


#: command -> its parser
PARSERS = {"wer": wer_parser, "decoding": decoding_parser, "speed": speed_parser,
           "longform": longform_parser, "compare": compare_parser, "runs": runs_parser,
           "layers": layers_parser, "mixers": mixers_parser}
