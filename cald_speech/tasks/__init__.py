"""Tasks: CTC speech recognition (``asr``), spoken intents (``intent``), layer distillation
(``layers``: GenDistiller, DistilHuBERT) and CTC probes of frozen layers (``probe``).

Each task has the same rooms: ``brain`` (its DistillBrain), ``data`` (datasets),
``model`` (models and their files), ``recipe`` (its :class:`~cald_speech.tasks.recipe.Task`
for the one driver, :func:`~cald_speech.tasks.recipe.run_recipe`); intents add
``labels`` and ``metrics``. Shared: ``recipe`` (driver), ``modes`` (models per guidance
mode), ``hparams`` (YAML and option checks).

May import: distill, gendistiller, student, features, data, mixers, errors — never
inference or bench.
"""
