"""The estimators in classifiers/ pass scikit-learn's own check_estimator (small settings)."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import SkipTestWarning
from sklearn.utils import estimator_checks as checks
from sklearn.utils.estimator_checks import check_estimator

from classifiers.cnn import CNNClassifier
from classifiers.heads import DenseHead
from classifiers.linear import LogisticHead
from classifiers.svm import BagOfVisualWordsSVM, FeatureSVM


def failures(estimator) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    assert len(results) > 40  # the checks really ran
    return [f"{r['check_name']}: {r['exception']}" for r in results if r["status"] == "failed"]


@pytest.mark.parametrize("estimator", [
    FeatureSVM(cv=2, C_grid=(1.0,), gamma_grid=("scale",)),
    LogisticHead(cv=2, C_grid=(1.0,)),
], ids=lambda e: type(e).__name__)
def test_feature_classifiers_pass_check_estimator(estimator):
    assert failures(estimator) == []


@pytest.mark.slow
def test_dense_head_passes_check_estimator():
    assert failures(DenseHead(epochs=3, optimizer="adam", learning_rate=0.05, start_from_epoch=0)) == []


def test_dense_head_refuses_what_would_crash_the_backend():
    head = DenseHead(epochs=1)
    with pytest.raises(ValueError, match="0 feature"):
        head.fit(np.zeros((4, 0)), [0, 1, 0, 1])  # once aborted the process inside oneDNN
    with pytest.raises(ValueError, match="NaN"):
        head.fit(np.array([[0.0, np.nan], [1.0, 1.0], [0.0, 0.0], [1.0, 0.5]]), [0, 1, 0, 1])


@pytest.mark.parametrize("estimator", [CNNClassifier(epochs=1), BagOfVisualWordsSVM()],
                         ids=lambda e: type(e).__name__)
def test_image_classifiers_declare_image_input_and_pass_the_api_checks(estimator):
    """They take images, not a feature matrix: scikit-learn skips its data checks (their tags say so), and
    the API checks that need no data still run."""
    with pytest.warns(SkipTestWarning, match="requires input"):
        ran = check_estimator(estimator, on_fail=None)
    assert [r["status"] for r in ran] == ["passed"] and ran[0]["check_name"] == "check_estimator_cloneable"
    name = type(estimator).__name__
    for check in (checks.check_no_attributes_set_in_init, checks.check_get_params_invariance,
                  checks.check_set_params, checks.check_parameters_default_constructible,
                  checks.check_estimators_unfitted):
        check(name, estimator)
