"""Classifiers on featurebank caches (scikit-learn style estimators), importable without the CLI.

Attributes are imported on first use, so that ``import classifiers.options`` stays free of scikit-learn.
"""

from classifiers.options import OPTIMIZERS

__all__ = ["OPTIMIZERS", "DenseHead", "NotFittedError"]


def __getattr__(name: str):
    if name == "DenseHead":
        from classifiers.heads import DenseHead

        return DenseHead
    if name == "NotFittedError":
        from classifiers.base import NotFittedError

        return NotFittedError
    raise AttributeError(f"module 'classifiers' has no attribute {name!r}")
