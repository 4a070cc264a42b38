"""Sequence tasks: language modelling, seq2seq and token sequence classification."""
