"""SVM baselines: an RBF SVC on pooled backbone features, and Thung & Yang's SIFT bag-of-visual-words SVC."""

from __future__ import annotations

from functools import partial

import numpy as np

from classifiers.base import ClassifierBase, PreprocessedPipelineClassifier, inner_folds, transform_features
from featurebank.errors import InvalidArgument

DEFAULT_C_GRID = (0.1, 1.0, 10.0, 100.0)
DEFAULT_GAMMA_GRID = ("scale", 1e-4, 1e-3)


def _grid_search_svc(X, y, *, C_grid, gamma_grid, cv: int, seed: int):
    """StandardScaler → SVC(rbf): C and gamma chosen by stratified CV on (X, y), then probabilities calibrated.

    Returns (fitted pipeline with predict_proba, best parameters, best CV accuracy).
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    splitter = inner_folds(y, cv, seed)
    folds = splitter.get_n_splits()
    search = GridSearchCV(make_pipeline(StandardScaler(), SVC(kernel="rbf")),
                          {"svc__C": list(C_grid), "svc__gamma": list(gamma_grid)}, cv=splitter, n_jobs=1)
    search.fit(X, y)
    best = {k.split("__", 1)[1]: v for k, v in search.best_params_.items()}
    calibrated = make_pipeline(StandardScaler(), CalibratedClassifierCV(SVC(kernel="rbf", **best), ensemble=False,
                                                                        cv=min(3, folds)))
    return calibrated.fit(X, y), best, float(search.best_score_)


class FeatureSVM(PreprocessedPipelineClassifier):
    """Standardised RBF SVC on feature vectors, C and gamma chosen by cross-validation on the training data.

    Parameters
    ----------
    C_grid, gamma_grid : values searched.
    cv : folds of the search (fewer when a class has fewer images).
    preprocess : 'none' (the study's baseline) or 'sqrt' (signed square root and L2 norm first).
    seed : seeds the folds and the SVC's probability calibration.

    Attributes
    ----------
    classes_, model_ (the fitted pipeline), best_params_, cv_accuracy_.
    """

    def __init__(self, *, C_grid=DEFAULT_C_GRID, gamma_grid=DEFAULT_GAMMA_GRID, cv: int = 5, preprocess: str = "none",
                 seed: int = 0):
        self.C_grid = C_grid
        self.gamma_grid = gamma_grid
        self.cv = cv
        self.preprocess = preprocess
        self.seed = seed

    def fit(self, X, y, *, classes=None) -> FeatureSVM:
        X, y = self._validate_fit(X, y)
        X = transform_features(X, self.preprocess)
        y_encoded = self._encode_labels(y, classes)
        self.model_, self.best_params_, self.cv_accuracy_ = _grid_search_svc(
            X, y_encoded, C_grid=self.C_grid, gamma_grid=self.gamma_grid, cv=self.cv, seed=self.seed)
        return self



def sift_descriptors(image: np.ndarray, *, max_keypoints: int = 500, root: bool = False) -> np.ndarray:
    """SIFT descriptors (k, 128) of an RGB uint8 image (k may be 0); ``root``: RootSIFT (L1-normalised, square
    root: Euclidean distance between them is the Hellinger distance of the SIFT histograms)."""
    import cv2

    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    _, descriptors = cv2.SIFT_create(nfeatures=max_keypoints).detectAndCompute(gray, None)
    if descriptors is None:
        return np.zeros((0, 128), np.float32)
    descriptors = descriptors.astype(np.float32)
    if root:
        descriptors = np.sqrt(descriptors / np.maximum(descriptors.sum(axis=1, keepdims=True), 1e-7))
    return descriptors


class BagOfVisualWordsSVM(ClassifierBase):
    """Thung & Yang's baseline: SIFT descriptors → k-means vocabulary (train only) → word histograms → SVC.

    X is a sequence of RGB uint8 images (all the same size or not). ``hellinger`` (default) uses
    RootSIFT descriptors and square-rooted word frequencies, the standard remedy for bursty visual
    words (Arandjelović & Zisserman 2012); off, descriptors and frequencies are used raw.
    Descriptors are computed on featurebank's array pool (OpenCV releases the GIL).

    Attributes
    ----------
    vocabulary_ (the fitted MiniBatchKMeans), svm_ (a FeatureSVM on the histograms), classes_.
    """

    def __init__(self, *, vocabulary_size: int = 200, max_keypoints: int = 500, max_descriptors: int = 100_000,
                 hellinger: bool = True, C_grid=DEFAULT_C_GRID, gamma_grid=DEFAULT_GAMMA_GRID, cv: int = 5,
                 seed: int = 0):
        self.vocabulary_size = vocabulary_size
        self.max_keypoints = max_keypoints
        self.max_descriptors = max_descriptors
        self.hellinger = hellinger
        self.C_grid = C_grid
        self.gamma_grid = gamma_grid
        self.cv = cv
        self.seed = seed

    def describe(self, X) -> list[np.ndarray]:
        """SIFT descriptors of each image, as this model computes them (on featurebank's array pool)."""
        from featurebank.array_pool import map_in_order

        return map_in_order(partial(sift_descriptors, max_keypoints=self.max_keypoints, root=self.hellinger), X)

    def _histograms(self, descriptor_sets) -> np.ndarray:
        out = np.zeros((len(descriptor_sets), self.vocabulary_size), np.float32)
        for i, descriptors in enumerate(descriptor_sets):
            if len(descriptors):
                words = self.vocabulary_.predict(descriptors)
                out[i] = np.bincount(words, minlength=self.vocabulary_size) / len(words)
        return np.sqrt(out) if self.hellinger else out

    def __sklearn_tags__(self):
        """Images in, not a 2-d feature matrix: scikit-learn's generic checks cannot apply (they then skip)."""
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = False
        return tags

    def fit(self, X, y, *, classes=None) -> BagOfVisualWordsSVM:
        self._check_X(X, y, min_samples=2)
        return self.fit_descriptors(self.describe(X), y, classes=classes)

    def fit_descriptors(self, descriptor_sets: list[np.ndarray], y, *, classes=None) -> BagOfVisualWordsSVM:
        """``fit`` on descriptors from ``describe`` (to try several vocabularies on one pass of SIFT)."""
        from sklearn.cluster import MiniBatchKMeans

        pooled = np.concatenate([d for d in descriptor_sets if len(d)] or [np.zeros((0, 128), np.float32)])
        if len(pooled) < self.vocabulary_size:
            raise InvalidArgument(f"only {len(pooled)} SIFT descriptors in the training images; need at least "
                             f"vocabulary_size={self.vocabulary_size} (use larger images or a smaller vocabulary)")
        rng = np.random.default_rng(self.seed)
        if len(pooled) > self.max_descriptors:
            pooled = pooled[rng.choice(len(pooled), self.max_descriptors, replace=False)]
        self.vocabulary_ = MiniBatchKMeans(self.vocabulary_size, random_state=self.seed, n_init=3,
                                           batch_size=4096).fit(pooled)
        self.svm_ = FeatureSVM(C_grid=self.C_grid, gamma_grid=self.gamma_grid, cv=self.cv, seed=self.seed)
        self.svm_.fit(self._histograms(descriptor_sets), y, classes=classes)
        self.classes_ = self.svm_.classes_
        self.best_params_, self.cv_accuracy_ = self.svm_.best_params_, self.svm_.cv_accuracy_
        return self

    def predict_proba(self, X) -> np.ndarray:
        self._check_fitted()
        return self.predict_proba_descriptors(self.describe(X))

    def predict_proba_descriptors(self, descriptor_sets: list[np.ndarray]) -> np.ndarray:
        self._check_fitted()
        return self.svm_.predict_proba(self._histograms(descriptor_sets))
