"""The ``make demo`` pipeline (``python -m cald_speech.demo``) and its report.

``pipeline``: the stages (corpus, manifests, starting model, teacher, students,
benchmarks, report), each resumable; ``report``: ``results/demo/report.md``.
May import: data, bench, cli, errors (the recipes and benchmarks run as subprocesses).
"""
