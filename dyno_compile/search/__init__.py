"""Profiles, accuracy and the multi-objective search that produce an artifact's Pareto set.

The configurations it searches and the evaluations it stores are :mod:`dyno_compile.configs`;
their vocabulary is :mod:`dyno_compile.packing.vocab`.
"""
