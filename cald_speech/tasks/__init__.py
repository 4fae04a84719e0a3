"""Tasks: CTC speech recognition (``asr``) and spoken intents (``intent``).

Each task has the same rooms: ``brain`` (its DistillBrain), ``data`` (datasets),
``model`` (models and their files), ``recipe`` (its :class:`~cald_speech.tasks.recipe.Task`
for the one driver, :func:`~cald_speech.tasks.recipe.run_recipe`); intents add
``labels`` and ``metrics``. Shared: ``recipe`` (driver), ``modes`` (models per guidance
mode), ``hparams`` (YAML and option checks).

May import: distill, student, features, data, mixers, errors — never inference or bench.
"""
