"""``cald-bench``: the benchmarks of trained students against their teachers.

Commands:

``cald-bench wer --teacher DIR --student DIR --csv test.csv``
    WER/CER of both models on the same items, their agreement, per-utterance diffs
    (:mod:`cald_speech.bench.wer`).
``cald-bench decoding --model DIR --csv test.csv --dev-csv dev.csv --lm LM.arpa``
    Greedy vs beam search vs beam search with an n-gram LM on the same posteriors, LM
    weights chosen on dev (:mod:`cald_speech.bench.decoding`).
``cald-bench speed (--model DIR ... | --shape wav2vec2-base ...) --minutes 0.5,1,5,10,30,60``
    Wall time, real-time factor and peak memory vs audio length of the teacher (one
    pass and windowed) and the student (one pass) (:mod:`cald_speech.bench.speed`).
``cald-bench longform --teacher DIR --student DIR --csv test.csv``
    One long recording of test utterances: WER, time and memory of the windowed
    teacher and the one-pass student (:mod:`cald_speech.bench.longform`).
``cald-bench compare --a RUN ... --b RUN ...``
    Paired bootstrap of two models' WER/CER on the same test utterances, from the
    transcripts the recipe writes (:mod:`cald_speech.bench.compare`).
``cald-bench runs FOLDER ...``
    Result table and training curves of finished recipe runs
    (:mod:`cald_speech.bench.runs`).
``cald-bench layers FOLDER``
    Layer students (GenDistiller, DistilHuBERT) vs their teacher from distill and probe
    recipe runs: parameters, L1/cos to the teacher's layers, probe CER/WER
    (:mod:`cald_speech.bench.layers`).
``cald-bench mixers --hidden 768 --lengths 250 1000 4000``
    Time and peak memory of every token mixer against softmax attention as the
    sequence grows (:mod:`cald_speech.bench.mixers`).

Exit status and error lines follow :mod:`cald_speech.cli`. Each writes a JSON file (and
the speed benchmark a PNG) under ``--output-dir`` (each command's ``--help`` says its
default), prints a table and records the machine in the JSON. The options are read
(:mod:`cald_speech.bench.options`) before the command's module is imported, so ``--help``
and usage errors answer at once.

Example
-------
>>> main([])  # doctest: +ELLIPSIS
usage: cald-bench {wer,decoding,speed,longform,compare,runs,layers,mixers} ...
...
2
"""

import importlib
import sys

from cald_speech import __version__
from cald_speech.allocator import tune_allocator
from cald_speech.bench.options import PARSERS
from cald_speech.cli import EXIT_OK, EXIT_USAGE, fail, parse
from cald_speech.errors import ConfigError

COMMANDS = {
    "wer": ("cald_speech.bench.wer", "WER/CER of teacher and student, agreement, diffs"),
    "decoding": ("cald_speech.bench.decoding", "greedy vs beam vs beam + n-gram LM"),
    "speed": ("cald_speech.bench.speed", "time, RTF and peak memory vs audio length"),
    "longform": ("cald_speech.bench.longform", "long recording: windowed teacher vs student"),
    "compare": ("cald_speech.bench.compare", "paired bootstrap of two models on one split"),
    "runs": ("cald_speech.bench.runs", "result table and training curves of recipe runs"),
    "layers": ("cald_speech.bench.layers", "layer students vs teacher: L1/cos, probe CER/WER"),
    "mixers": ("cald_speech.bench.mixers", "token mixers vs attention: time, memory vs length"),
}


def usage():
    """The top-level usage text."""
    lines = ["usage: cald-bench {" + ",".join(COMMANDS) + "} [options]", "", "commands:"]
    lines += [f"  {name:<9} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines.append("\n`cald-bench COMMAND --help` shows a command's options.")
    return "\n".join(lines)


def main(argv=None):
    """Entry point of ``cald-bench``; returns the command's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] == "--version":
        print(f"cald-bench {__version__}")
        return EXIT_OK
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(usage(), file=sys.stderr)
        return fail("cald-bench", ConfigError(f"unknown command '{name}'"))
    args, status = parse(PARSERS[name](), rest)  # --help, usage errors: nothing imported
    if args is None:
        return status
    args.argv = rest  # the command line, for commands that pass it on to child processes
    try:
        tune_allocator()
    except ConfigError as exc:
        return fail("cald-bench", exc)
    return importlib.import_module(COMMANDS[name][0]).command(args)


if __name__ == "__main__":
    sys.exit(main())
