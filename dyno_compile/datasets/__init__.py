"""Loaders for the real data sets used to test and calibrate (CIFAR-10, ImageNet samples).

The data lives outside the repository, in ``../shared/data`` beside the project root;
``DYNO_DATA`` overrides that location.
"""

from dyno_compile.datasets.location import data_root

__all__ = ["data_root"]
