"""Benchmarks: speed and memory versus audio length, accuracy versus the teacher.

One console script, ``cald-bench`` (:mod:`cald_speech.bench.cli`): ``wer``, ``speed``,
``longform``, ``compare``, ``runs``, ``mixers``; the starting-model comparison
(:mod:`cald_speech.bench.starting_models`) and the updates-to-parity report
(:mod:`cald_speech.bench.parity`) run as modules. May import inference, student, mixers,
data, cli and errors; never the training code (tasks, distill).
"""
