"""The spoken-intent task: labels, model, metrics, brain, data, recipe.

Importing this package imports nothing (inference loads only ``model``); import the
module you need.
"""
