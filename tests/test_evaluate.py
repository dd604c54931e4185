"""`featurebank evaluate`: folds that partition the images, tuning that never sees the outer test fold, joined caches."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.base import BaseEstimator, ClassifierMixin

import featurebank
from classifiers.evaluate import cross_validate
from cli import main


class RecordingHead(ClassifierMixin, BaseEstimator):
    """Records every X it is fitted on (its 'tuning' data) and predicts the majority class."""

    fitted_on: list = []

    def fit(self, X, y, classes=None):
        RecordingHead.fitted_on.append(np.array(X, copy=True))
        self.classes_ = np.asarray(classes)
        self.majority_ = np.bincount(y, minlength=len(classes)) / len(y)
        return self

    def predict_proba(self, X):
        return np.tile(self.majority_, (len(X), 1))


def test_folds_partition_the_images_and_tuning_never_sees_the_test_fold(small_cache):
    fs = featurebank.load(cache=small_cache["cache"], backbone="resnet50", pooling="avg+max")
    assert fs.X.shape == (180, 4096)
    RecordingHead.fitted_on = []
    result = cross_validate(fs, RecordingHead(), folds=5, seed=3)
    fold_of = result["fold_of"]
    assert sorted(np.bincount(fold_of).tolist()) == [36] * 5  # every image in exactly one test fold
    for k, seen in enumerate(RecordingHead.fitted_on):
        test_rows = {row.tobytes() for row in fs.X[fold_of == k]}
        train_rows = {row.tobytes() for row in seen}
        assert len(seen) == 144 and not test_rows & train_rows
        for label in range(6):  # stratified: each class is split evenly over the folds
            assert abs((fs.y[fold_of == k] == label).sum() - 6) <= 1


def test_cli_evaluate_json_and_run_folder(small_cache, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--cache", str(small_cache["cache"]), "--backbone", "resnet50",
                                       "--head", "logreg", "--folds", "3", "--runs-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["model"] == "logreg" and len(payload["folds"]) == 3
    assert payload["accuracy_mean"] == pytest.approx(np.mean(payload["folds"]))
    assert payload["accuracy_std"] == pytest.approx(np.std(payload["folds"]))
    assert payload["accuracy_mean"] >= 0.9  # the generated classes differ in colour: even random features separate them
    run_dir = Path(payload["run_dir"])
    with open(run_dir / "oof_probabilities.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 180 and {r["fold"] for r in rows} == {"0", "1", "2"}
    assert all(abs(sum(float(v) for k, v in r.items() if k.startswith("p_")) - 1) < 1e-4 for r in rows)
    assert (run_dir / "confusion.png").is_file() and len(json.loads((run_dir / "folds.json").read_text())) == 3


def test_joined_caches_report_images_missing_from_one(tmp_path, make_images):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 3)
    options = dict(cache=cache, weights="none", input_size=(64, 64))
    featurebank.extract(data, backbone="resnet50", **options)
    make_images(data, 1, start=3, classes=["glass"])
    featurebank.extract(data, backbone="mobilenetv2", **options)
    joined = featurebank.load(cache=cache, backbone="mobilenetv2+resnet50", pooling="avg")
    assert joined.X.shape == (18, 1280 + 2048)
    assert joined.missing == {"resnet50": ["glass/glass3.jpg"]}
    alone = featurebank.load(cache=cache, backbone="resnet50", pooling="avg")
    order = {p: i for i, p in enumerate(alone.paths)}
    np.testing.assert_array_equal(joined.X[:, 1280:], alone.X[[order[p] for p in joined.paths]])


def test_pooled_only_store_and_exclusion_list(tmp_path, make_images):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 2)
    featurebank.extract(data, cache=cache, weights="none", input_size=(64, 64), store="pooled")
    shard = next(cache.glob("*.shards/*.h5"))
    import h5py

    with h5py.File(shard) as fh:
        assert "features" not in fh and fh["pooled_avg"].shape == (12, 2048)
    fs = featurebank.load(cache=cache, pooling="max")
    assert fs.X.shape == (12, 2048)
    with pytest.raises(featurebank.CacheError, match="pooled vectors only"):
        featurebank.load(cache=cache)
    exclusions = tmp_path / "exclude.txt"
    exclusions.write_text(f"# made by hand\n{fs.sha256[0]}\tduplicate\n{fs.sha256[5]}\tlabel issue\n")
    kept = featurebank.load(cache=cache, pooling="max", exclude=exclusions)
    assert len(kept) == 10 and fs.sha256[0] not in kept.sha256
    exclusions.write_text("not-a-hash\treason\n")
    with pytest.raises(featurebank.errors.InvalidArgument, match="exclude.txt:1: expected a sha256"):
        featurebank.load(cache=cache, pooling="max", exclude=exclusions)
