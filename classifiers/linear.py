"""Cheap strong learners on pooled features: L2-regularised logistic regression, tuned by inner CV.

Pooled ReLU features are non-negative and heavy-tailed; a signed square root ("power
normalisation", as in Fisher-vector and bilinear-pooling work) before standardising helps linear
models on them. C is chosen by stratified cross-validation on the training data given to ``fit``
only, so an outer evaluation fold is never seen by the tuning.
"""

from __future__ import annotations

from classifiers.base import PreprocessedPipelineClassifier, inner_folds, transform_features

DEFAULT_LOGREG_C = (0.01, 0.1, 1.0, 10.0)


class LogisticHead(PreprocessedPipelineClassifier):
    """[signed sqrt + L2 norm] → StandardScaler → multinomial LogisticRegression, C by inner CV.

    Parameters
    ----------
    C_grid : inverse regularisation strengths searched.
    preprocess : 'sqrt' (default) or 'none'.
    cv : inner folds (fewer when a class has fewer images).
    seed : seeds the inner folds.

    Attributes
    ----------
    classes_, model_ (the fitted pipeline), best_params_, cv_accuracy_, n_features_in_.
    """

    def __init__(self, *, C_grid=DEFAULT_LOGREG_C, preprocess: str = "sqrt", cv: int = 3, seed: int = 0):
        self.C_grid = C_grid
        self.preprocess = preprocess
        self.cv = cv
        self.seed = seed

    def fit(self, X, y, *, classes=None) -> LogisticHead:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X, y = self._validate_fit(X, y)
        X = transform_features(X, self.preprocess)
        y_encoded = self._encode_labels(y, classes)
        search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                              {"logisticregression__C": list(self.C_grid)},
                              cv=inner_folds(y_encoded, self.cv, self.seed), n_jobs=1)
        search.fit(X, y_encoded)
        self.model_ = search.best_estimator_
        self.best_params_ = {"C": search.best_params_["logisticregression__C"]}
        self.cv_accuracy_ = float(search.best_score_)
        return self
