"""What every featurebank classifier shares: label encoding, input checks, score."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from featurebank.errors import InvalidArgument


class NotFittedError(SklearnNotFittedError):
    """Raised when predict/score is called before fit (scikit-learn's own, so its checks recognise it)."""


class ClassifierBase(ClassifierMixin, BaseEstimator):
    """scikit-learn base (get_params, set_params, clone): subclasses implement ``fit`` and ``predict_proba``.

    Inputs go through scikit-learn's own validation (``validate_data``, ``check_classification_targets``),
    so sparse, complex, NaN or infinite X, X with no features, 1-d X and continuous targets are
    refused with scikit-learn's messages instead of reaching a backend that may crash on them.
    """

    def _validate_fit(self, X, y, *, allow_nd: bool = False, min_samples: int = 2):
        """Validated (X float32, y) for fit; sets ``n_features_in_``."""
        X, y = validate_data(self, X, y, accept_sparse=False, dtype=np.float32, allow_nd=allow_nd,
                             ensure_min_samples=min_samples)
        check_classification_targets(y)
        return X, y

    def _validate_predict(self, X, *, allow_nd: bool = False) -> np.ndarray:
        """Validated X for predict, after checking that the estimator is fitted."""
        self._check_fitted()
        return validate_data(self, X, reset=False, accept_sparse=False, dtype=np.float32, allow_nd=allow_nd)

    def _encode_labels(self, y, classes=None) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim != 1:
            raise InvalidArgument(f"y must be a 1-d array of labels; received shape {y.shape}")
        self.classes_ = np.unique(y) if classes is None else np.asarray(classes)
        lookup = {c: i for i, c in enumerate(self.classes_.tolist())}
        try:
            return np.array([lookup[v] for v in y.tolist()], dtype=np.int64)
        except KeyError as exc:
            raise InvalidArgument(f"y has label {exc.args[0]!r} that is not in classes {self.classes_.tolist()}") from None

    def _encode_more(self, y) -> np.ndarray:
        """Encode labels (e.g. the validation split's) with the ``classes_`` learned at fit."""
        lookup = {c: i for i, c in enumerate(self.classes_.tolist())}
        unknown = sorted(set(np.asarray(y).tolist()) - set(lookup))
        if unknown:
            raise InvalidArgument(f"labels {unknown} are not among the training classes {self.classes_.tolist()}")
        return np.array([lookup[v] for v in np.asarray(y).tolist()], dtype=np.int64)

    @staticmethod
    def _check_X(X, y=None, *, min_samples: int = 1) -> None:
        if len(X) < min_samples:
            raise InvalidArgument(f"need at least {min_samples} samples; received {len(X)}")
        if y is not None and len(X) != len(y):
            raise InvalidArgument(f"X and y have different lengths: {len(X)} and {len(y)}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; call fit first")

    def predict(self, X) -> np.ndarray:
        """Most probable class for each row of X."""
        proba = self.predict_proba(X)  # checks that the model is fitted
        return self.classes_[np.argmax(proba, axis=1)]


TRANSFORMS = ("none", "sqrt")


def transform_features(X, transform: str) -> np.ndarray:
    """'none', or 'sqrt': sign(x)·sqrt(|x|), then each row scaled to unit L2 norm."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise InvalidArgument(f"X must be 2-d (pool the features first); received shape {X.shape}")
    if transform == "none":
        return X
    if transform == "sqrt":
        X = np.sign(X) * np.sqrt(np.abs(X))
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    raise InvalidArgument(f"transform must be one of {', '.join(TRANSFORMS)}; received {transform!r}")


def inner_folds(y: np.ndarray, cv: int, seed: int):
    """A StratifiedKFold with at most ``cv`` folds and no more than the smallest class allows."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    folds = min(cv, int(counts[counts > 0].min()))
    if folds < 2:
        raise InvalidArgument("need at least 2 training images of every class to tune by cross-validation")
    return StratifiedKFold(folds, shuffle=True, random_state=seed)


class PreprocessedPipelineClassifier(ClassifierBase):
    """A scikit-learn pipeline (``model_``) on ``transform_features(X, self.preprocess)``: the shared predict side."""

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities in ``classes_`` order; classes absent from training get probability 0."""
        X = self._validate_predict(X)
        proba = self.model_.predict_proba(transform_features(X, self.preprocess))
        full = np.zeros((len(proba), len(self.classes_)))
        full[:, self.model_.classes_] = proba
        return full
