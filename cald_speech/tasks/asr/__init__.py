"""The CTC speech-recognition task: brain, data, model, recipe.

Importing this package imports nothing; import the module you need.
"""
