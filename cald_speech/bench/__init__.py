"""Benchmarks: speed and memory versus audio length, accuracy versus the teacher.

Run a benchmark as a module, e.g. ``python -m cald_speech.bench.mixers --quick``.
"""
