"""Replaying traces and comparing policies: the evaluation side of dyno-compile."""
