"""Decoding: audio -> text (the one decoder) and its output formats."""
