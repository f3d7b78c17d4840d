"""Profiles, accuracy and the multi-objective search that produce an artifact's Pareto set."""
from dyno_compile.search.space import Config, Evaluation

__all__ = ["Config", "Evaluation"]
