"""Classifiers on featurebank caches (scikit-learn style estimators), importable without the CLI."""

from classifiers.base import NotFittedError
from classifiers.heads import OPTIMIZERS, DenseHead

__all__ = ["OPTIMIZERS", "DenseHead", "NotFittedError"]
