"""Corpus synthesis, corpus preparation, text normalisation and tokenisation."""
